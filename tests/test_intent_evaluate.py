"""llm.intent evaluation: the scores on hand-checked predictions, and the server clients (PAI-EAS, OpenAI)."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from llm.intent import SYSTEM_PROMPT, IntentExample, save_examples
from llm.intent.cli import main
from llm.intent.evaluate import Prediction, evaluate_predictions, format_report, score
from llm.intent.predict import OpenAIPredictor, PaiEasPredictor, PredictionError, openai_urls, predict

from .conftest import FakeChatModel
from .intent_fixtures import MODEL_NAME, stand_in_server

# (expected, predicted, intent correct, parameters correct) -- checked by hand.
HAND_CHECKED = [
    ("play_music()", "play_music()", True, True),
    ("play_music()", "play_music", True, True),                                      # no parentheses
    ("weather_search(杭州)", "好的，weather_search(杭州)。", True, True),               # extra text
    ("weather_search(杭州)", "weather_search(北京)", True, False),                     # wrong argument
    ("weather_search(北京);play_music()", "play_music();weather_search(北京)", True, True),  # order is free
    ("weather_search(北京);play_music()", "weather_search(北京)", False, False),       # an intent missing
    ("volume_up()", "volume_down()", False, False),
    ("set_alarm(明天,七点)", "set_alarm(七点, 明天)", True, True),                     # a set of arguments
    ("navigate_to(西湖)", "我不知道", False, False),                                   # no call at all
    ("play_music()", "play_music()<|im_end|> random words here", True, True),         # trailing text
    ("play_music()", "play_music();play_music()", False, False),                      # an extra intent
    ("set_alarm(七点)", "set_alarm()", True, False),                                  # argument missing
]


@pytest.mark.parametrize("expected, predicted, intent_ok, params_ok", HAND_CHECKED)
def test_score(expected: str, predicted: str, intent_ok: bool, params_ok: bool):
    assert score(expected, predicted) == (intent_ok, params_ok)


def test_report_on_hand_checked_predictions():
    predictions = [Prediction(f"utterance {i}", e, p) for i, (e, p, _, _) in enumerate(HAND_CHECKED)]
    report = evaluate_predictions(predictions)
    assert report.examples == 12
    assert report.intent_accuracy == pytest.approx(8 / 12)
    assert report.param_accuracy == pytest.approx(6 / 12)
    rows = {r.intent: r for r in report.per_intent}
    assert set(rows) == {"play_music", "weather_search", "weather_search;play_music", "volume_up", "set_alarm",
                         "navigate_to"}
    assert (rows["play_music"].examples, rows["play_music"].intent_accuracy, rows["play_music"].param_accuracy) == (
        4, 0.75, 0.75)
    assert (rows["weather_search"].intent_accuracy, rows["weather_search"].param_accuracy) == (1.0, 0.5)
    assert (rows["set_alarm"].intent_accuracy, rows["set_alarm"].param_accuracy) == (1.0, 0.5)
    assert (rows["weather_search;play_music"].intent_accuracy, rows["weather_search;play_music"].param_accuracy) == (
        0.5, 0.5)
    assert rows["navigate_to"].intent_accuracy == 0.0
    assert [m.instruction for m in report.misses] == [f"utterance {i}" for i in (3, 5, 6, 8, 10, 11)]
    text = format_report(report)
    assert "intent accuracy:    0.6667" in text and "parameter accuracy: 0.5000" in text
    assert "misses: 6" in text and "'我不知道'" in text
    as_json = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    assert as_json["param_accuracy"] == pytest.approx(0.5) and len(as_json["predictions"]) == 12
    assert as_json["misses"][0] == {"instruction": "utterance 3", "expected": "weather_search(杭州)",
                                    "predicted": "weather_search(北京)", "intent_correct": True,
                                    "params_correct": False}
    with pytest.raises(ValueError):
        evaluate_predictions([])


def test_openai_urls():
    for base in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/chat/completions"):
        assert openai_urls(base) == ("http://h:8000/v1/chat/completions", "http://h:8000/v1/models")


EXAMPLES = [IntentExample("我想听音乐", "play_music()"), IntentExample("查下杭州天气", "weather_search(杭州)")]


def test_pai_client_speaks_the_protocol():
    model = FakeChatModel("weather_search(杭州)")
    with stand_in_server(model, token="s3cret") as server:
        with PaiEasPredictor(server.url + "/", api_key="s3cret", max_new_tokens=32) as predictor:
            predictions = predict(EXAMPLES, predictor, progress=False)
        with PaiEasPredictor(server.url + "/", api_key="wrong") as predictor:
            with pytest.raises(PredictionError, match="--api-key"):
                predictor("我想听音乐")
    assert [p.predicted for p in predictions] == ["weather_search(杭州)"] * 2
    path, body = server.requests[0]
    assert path == "/" and body == {"prompt": "我想听音乐", "system_prompt": SYSTEM_PROMPT, "history": [],
                                    "temperature": 0, "max_new_tokens": 32, "use_stream_chat": False}
    messages, params = model.calls[0]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT} and params.greedy


def test_openai_client_speaks_the_protocol():
    model = FakeChatModel("play_music()")
    with stand_in_server(model, token="k") as server:
        with OpenAIPredictor(server.url, api_key="k", max_new_tokens=16) as predictor:
            assert predictor.model_name() == MODEL_NAME  # from GET /v1/models
            predictions = predict(EXAMPLES, predictor, progress=False)
        with OpenAIPredictor(server.url + "/v1", model="other", api_key="k") as predictor:
            with pytest.raises(PredictionError, match="HTTP 404"):
                predictor("我想听音乐")
    assert [p.predicted for p in predictions] == ["play_music()"] * 2
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "我想听音乐"}]
    assert body["temperature"] == 0 and body["max_tokens"] == 16 and body["model"] == MODEL_NAME


def test_unreachable_or_wrong_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with PaiEasPredictor(f"http://127.0.0.1:{port}/", timeout=5) as predictor:
        with pytest.raises(PredictionError, match="cannot reach"):
            predictor("我想听音乐")
    with stand_in_server(FakeChatModel("x")) as server:
        with PaiEasPredictor(server.url + "/echo", timeout=5) as predictor:  # answers JSON, not a reply
            with pytest.raises(PredictionError, match="'response'"):
                predictor("我想听音乐")


def test_evaluate_command_through_a_server(tmp_path: Path, capsys: pytest.CaptureFixture):
    test_file = save_examples(EXAMPLES, tmp_path / "test.json")
    report_file = tmp_path / "report.json"
    with stand_in_server(FakeChatModel("play_music()")) as server:
        status = main(["evaluate", "--test-file", str(test_file), "--openai-url", server.url,
                       "--report", str(report_file)])
    assert status == 0
    out = capsys.readouterr().out
    assert "intent accuracy:    0.5000" in out and "misses: 1" in out
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["intent_accuracy"] == 0.5 and report["misses"][0]["expected"] == "weather_search(杭州)"
    assert main(["evaluate", "--test-file", str(test_file), "--pai-url", "http://127.0.0.1:9/",
                 "--timeout", "2"]) == 2
    assert "cannot reach" in capsys.readouterr().err
