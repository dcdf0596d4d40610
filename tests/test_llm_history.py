"""llm/history.py and llm/templates.py: history rounds -> messages -> rendered prompt."""
from __future__ import annotations

import pytest

from llm import build_demo_model, build_messages, load_chat_model, trim_history
from llm.templates import MODEL_TYPES, template_for

HISTORY = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_chat_model(str(build_demo_model(tmp_path_factory.getbasetemp() / "llm-demo-model")), cpu=True)


@pytest.mark.parametrize(
    ("max_round", "expected"),
    [(None, HISTORY), (0, []), (1, [("q3", "a3")]), (2, HISTORY[1:]), (10, HISTORY)],
)
def test_trim_history(max_round, expected):
    assert trim_history(HISTORY, max_round) == expected
    assert trim_history([], max_round) == []


def test_trim_history_rejects_negative():
    with pytest.raises(ValueError, match="max_round"):
        trim_history(HISTORY, -1)
    with pytest.raises(ValueError, match="max_round"):
        build_messages("q", HISTORY, max_round=-2)


def test_build_messages_shapes():
    assert build_messages("q") == [{"role": "user", "content": "q"}]
    assert build_messages("q", HISTORY, system_prompt="sys", max_round=1) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
        {"role": "user", "content": "q"},
    ]
    assert len(build_messages("q", HISTORY)) == 7
    assert build_messages("q", HISTORY, system_prompt="  ", max_round=0) == [{"role": "user", "content": "q"}]


def test_rendered_prompt_keeps_only_the_last_rounds(model):
    prompt = model.render_prompt(build_messages("q4", HISTORY, system_prompt="Be brief.", max_round=1))
    assert "q3" in prompt and "a3" in prompt and "q4" in prompt
    assert not any(old in prompt for old in ("q1", "a1", "q2", "a2"))
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\nq4<|im_end|>\n<|im_start|>assistant\n")


RENDER = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("chatml", "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
                   "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"),
        ("llama2", "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 <|im_end|>[INST] U2 [/INST]"),
        ("llama3", "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("plain", "S\n\nUser: U1\nAssistant: A1\nUser: U2\nAssistant:"),
    ],
)
def test_fallback_templates_render(model, model_type, expected):
    # the demo tokenizer has eos <|im_end|> and no bos: the templates use what the tokenizer defines
    text = model.tokenizer.apply_chat_template(
        RENDER, chat_template=template_for(model_type), tokenize=False, add_generation_prompt=True
    )
    assert text == expected


def test_template_names():
    assert template_for("qwen") == template_for("qwen2") == template_for("yi") == template_for("ChatML")
    assert template_for("mistral") == template_for("llama2")
    assert set(MODEL_TYPES) >= {"chatml", "qwen", "qwen2", "yi", "llama2", "mistral", "llama3", "plain"}
    with pytest.raises(ValueError) as info:
        template_for("gpt5")
    assert "gpt5" in str(info.value) and all(name in str(info.value) for name in MODEL_TYPES)
