"""llm.intent fine-tuning on the tiny demo model (CPU): LoRA learns the labels, the adapter and the merged
model load with --lora-path / --model-path, and the tuned model is scored locally and through a server.

The demo model's output layer gives <|im_end|> and byte tokens (Chinese characters outside its small
vocabulary) a score of exactly 0, whatever the input, so with the output layer frozen it can neither
stop nor write those arguments.  These tests therefore train ``lm_head`` too (peft ``modules_to_save``);
a real Qwen already writes every token and <|im_end|>, and is tuned with plain LoRA (the default).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm import ModelLoadError, build_demo_model, load_chat_model
from llm.intent import SYSTEM_PROMPT, IntentExample, load_examples, save_examples
from llm.intent.cli import main
from llm.intent.evaluate import evaluate_predictions
from llm.intent.finetune import (
    GLOBAL_BATCH_SIZE,
    IGNORE_INDEX,
    METHOD_DEFAULTS,
    FinetuneConfig,
    FinetuneError,
    default_global_batch_size,
    encode_example,
    finetune,
    next_power_of_two,
)
from llm.intent.predict import ChatModelPredictor, OpenAIPredictor, PaiEasPredictor, predict

from .intent_fixtures import stand_in_server

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 24  # the longest label of the training set is 16 tokens, plus <|im_end|>


def small_training_set() -> list[IntentExample]:
    """From examples/intent/train.json: 2 single-turn examples per intent, 2 with several intents, 4 multi-turn."""
    picked, seen = [], {}
    for example in load_examples(ROOT / "examples" / "intent" / "train.json"):
        kind = "multi-turn" if example.is_multi_turn else ("several" if ";" in example.output else
                                                          example.output.split("(")[0])
        quota = 4 if kind == "multi-turn" else 2
        if seen.get(kind, 0) < quota:
            seen[kind] = seen.get(kind, 0) + 1
            picked.append(example)
    return picked


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.getbasetemp() / "llm-demo-model")


@pytest.fixture(scope="module")
def train_set() -> list[IntentExample]:
    return small_training_set()


@pytest.fixture(scope="module")
def tuned(demo_path: Path, train_set: list[IntentExample], tmp_path_factory: pytest.TempPathFactory):
    """One LoRA fine-tune (with a merged copy) shared by the tests of this module."""
    config = FinetuneConfig(method="lora", epochs=40, learning_rate=5e-3, global_batch_size=4,
                            per_device_batch_size=4, lora_modules_to_save=("lm_head",), merge=True, cpu=True)
    return finetune(demo_path, train_set, tmp_path_factory.mktemp("intent") / "adapter", config)


@pytest.fixture(scope="module")
def tuned_model(demo_path: Path, tuned):
    return load_chat_model(str(demo_path), cpu=True, lora_path=tuned.output_dir)


def _score(model, examples):
    predictor = ChatModelPredictor(model, max_new_tokens=MAX_NEW_TOKENS)
    return evaluate_predictions(predict(examples, predictor, progress=False))


def test_published_defaults():
    config = FinetuneConfig()
    assert (config.method, config.lora_rank, config.lora_alpha) == ("lora", 64, 16)
    assert METHOD_DEFAULTS["lora"] == {"learning_rate": 3e-4, "epochs": 5.0}
    assert METHOD_DEFAULTS["full"] == {"learning_rate": 5e-5, "epochs": 3.0}
    assert GLOBAL_BATCH_SIZE == 256
    assert [next_power_of_two(n) for n in (1, 37, 64, 65, 1000)] == [1, 64, 64, 128, 1024]
    assert [default_global_batch_size(n) for n in (5000, 2048, 1000, 100, 20, 3)] == [256, 256, 64, 8, 2, 1]
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="adapter")
    with pytest.raises(ValueError, match="merge"):
        FinetuneConfig(method="full", merge=True)


def test_examples_are_chat_formatted_with_loss_on_the_answer_only(demo_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_path)
    encoded = encode_example(tokenizer, IntentExample("我想去杭州玩,帮我查下天气预报", "weather_search(杭州)"))
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert len(ids) == len(labels) == len(encoded["attention_mask"])
    answer_start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in labels[:answer_start])
    assert labels[answer_start:] == ids[answer_start:]
    prompt = tokenizer.decode(ids[:answer_start])
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n我想去杭州玩")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[answer_start:]) == "weather_search(杭州)<|im_end|>"


def test_qlora_is_refused_without_a_gpu(demo_path: Path, tmp_path: Path):
    examples = [IntentExample("我想听音乐", "play_music()")]
    with pytest.raises(FinetuneError, match="CUDA GPU.*--method lora"):
        finetune(demo_path, examples, tmp_path / "out", FinetuneConfig(method="qlora", cpu=True))
    if not torch.cuda.is_available():
        with pytest.raises(FinetuneError, match="CUDA GPU"):
            finetune(demo_path, examples, tmp_path / "out", FinetuneConfig(method="qlora"))


def test_lora_finetune_lowers_the_loss_and_reproduces_the_training_labels(demo_path, train_set, tuned, tuned_model):
    assert tuned.method == "lora" and tuned.examples == len(train_set) == 20
    assert tuned.steps == 40 * 5 and tuned.global_batch_size == 4
    assert tuned.max_length == next_power_of_two(max(len(e["input_ids"]) for e in (
        encode_example(tuned_model.tokenizer, x) for x in train_set)))
    assert tuned.losses[-1] < tuned.losses[0] / 10, tuned.losses
    log = json.loads((tuned.output_dir / "training_log.json").read_text())
    assert [e["loss"] for e in log if "loss" in e] == list(tuned.losses)
    assert (tuned.output_dir / "adapter_config.json").is_file()
    assert (tuned.output_dir / "adapter_model.safetensors").is_file()

    after = _score(tuned_model, train_set)
    before = _score(load_chat_model(str(demo_path), cpu=True), train_set)
    assert after.intent_accuracy == 1.0, after.misses
    assert after.param_accuracy >= 0.9, after.misses
    assert before.intent_accuracy <= 0.1 and before.param_accuracy <= 0.1
    # It learned to stop, too: most answers are the label and nothing else.
    exact = sum(p.predicted == p.expected for p in after.predictions)
    assert exact >= 0.9 * len(train_set), [p.predicted for p in after.predictions]


def test_merged_model_and_the_adapter_alone_serve_the_same_answers(demo_path, train_set, tuned, tuned_model):
    assert tuned.merged_dir == tuned.output_dir / "merged"
    merged = load_chat_model(str(tuned.merged_dir), cpu=True)
    base_from_adapter = load_chat_model(None, cpu=True, lora_path=tuned.output_dir)  # base recorded in the adapter
    assert base_from_adapter.name == str(demo_path) and not base_from_adapter.is_demo
    reference = ChatModelPredictor(tuned_model, max_new_tokens=MAX_NEW_TOKENS)
    for predictor in (ChatModelPredictor(merged, max_new_tokens=MAX_NEW_TOKENS),
                      ChatModelPredictor(base_from_adapter, max_new_tokens=MAX_NEW_TOKENS)):
        assert [predictor(e.instruction) for e in train_set[:6]] == [reference(e.instruction) for e in train_set[:6]]


def test_tuned_model_scored_through_a_server(train_set, tuned_model, tmp_path: Path, capsys):
    local = _score(tuned_model, train_set)
    with stand_in_server(tuned_model, token="tok") as server:
        with PaiEasPredictor(server.url + "/", api_key="tok", max_new_tokens=MAX_NEW_TOKENS) as pai:
            via_pai = evaluate_predictions(predict(train_set, pai, progress=False))
        with OpenAIPredictor(server.url, api_key="tok", max_new_tokens=MAX_NEW_TOKENS) as openai:
            via_openai = evaluate_predictions(predict(train_set, openai, progress=False))
        test_file = save_examples(train_set, tmp_path / "train.json")
        status = main(["evaluate", "--test-file", str(test_file), "--pai-url", server.url + "/", "--api-key", "tok",
                       "--max-new-tokens", str(MAX_NEW_TOKENS)])
    assert via_pai.predictions == via_openai.predictions == local.predictions
    assert via_pai.intent_accuracy == 1.0
    assert status == 0 and "intent accuracy:    1.0000" in capsys.readouterr().out
    assert {body["system_prompt"] for path, body in server.requests if path == "/"} == {SYSTEM_PROMPT}


def test_bad_lora_path_is_a_load_error(demo_path: Path, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_chat_model(str(demo_path), cpu=True, lora_path=tmp_path / "missing")
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "other")
    with pytest.raises(ModelLoadError, match="cannot apply the LoRA adapter") as info:
        load_chat_model(str(demo_path), cpu=True, lora_path=tmp_path / "other")
    assert str(tmp_path / "other") in str(info.value) and info.value.__cause__ is not None


def test_full_finetune_through_the_command_line(demo_path: Path, train_set, tmp_path: Path, capsys):
    train_file = save_examples(train_set[:8], tmp_path / "train.json")
    out = tmp_path / "full"
    status = main(["finetune", "--model-path", str(demo_path), "--train-file", str(train_file), "--output-dir",
                   str(out), "--method", "full", "--epochs", "2", "--global-batch-size", "4", "--cpu"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "trained 4 steps on 8 examples" in printed and f"--model-path {out}" in printed
    settings = json.loads((out / "intent_finetune.json").read_text())
    assert settings["config"]["method"] == "full" and settings["result"]["learning_rate"] == 5e-5
    model = load_chat_model(str(out), cpu=True)  # a whole model folder, served with --model-path
    base = load_chat_model(str(demo_path), cpu=True)
    changed = any(not torch.equal(a, b) for a, b in zip(model.model.parameters(), base.model.parameters()))
    assert changed
    assert main(["finetune", "--model-path", str(demo_path), "--train-file", str(train_file), "--output-dir",
                 str(tmp_path / "q"), "--method", "qlora", "--cpu"]) == 2
    assert "CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_adapter_served_with_lora_path_through_our_real_api(demo_path, train_set, tuned, server):
    """``run.py --model-path <base> --lora-path <adapter>``: the PAI-EAS and OpenAI APIs of the
    real server score the training labels as the tuned model does locally."""
    srv = server(f"--model-path={demo_path}", f"--lora-path={tuned.output_dir}")
    srv.wait()
    assert "applied and merged the LoRA adapter" in srv.output()
    with PaiEasPredictor(srv.url + "/", max_new_tokens=MAX_NEW_TOKENS) as pai:
        via_pai = evaluate_predictions(predict(train_set, pai, progress=False))
    with OpenAIPredictor(srv.url, max_new_tokens=MAX_NEW_TOKENS) as openai:
        via_openai = evaluate_predictions(predict(train_set, openai, progress=False))
    assert via_pai.intent_accuracy == via_openai.intent_accuracy == 1.0
    assert via_pai.param_accuracy == 1.0
