"""llm.intent data side: the training format, iTAG manifest conversion (both shapes), output parsing, the data check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.intent import IntentDataError, IntentExample, join_turns, load_examples, parse_calls, save_examples
from llm.intent.calls import FunctionCall
from llm.intent.check import check_examples, format_report
from llm.intent.cli import main
from llm.intent.manifest import convert_manifest, convert_manifest_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "intent"


def _old(source, label, key="label-1785714133418250240") -> str:
    return json.dumps({"data": {"source": source}, key: {"results": [{"data": label}]}}, ensure_ascii=False)


def _new(source, label, key="label-1790512963271143424") -> str:
    mark = json.dumps({"annotations": [{"labels": {"output": label}}]}, ensure_ascii=False)
    return json.dumps({"data": {"source": source}, key: {"results": [{"MarkResult": mark}]}}, ensure_ascii=False)


def test_both_manifest_shapes_convert_and_bad_lines_are_reported_with_numbers():
    lines = [
        _old("我想听音乐", "play_music()"),                                   # 1 older shape
        _new("我想去杭州玩,帮我查下天气预报", "weather_search(杭州)"),          # 2 newer shape
        "",                                                                   # 3 blank: ignored
        '{"data": {"source": "被截断的一行"}, "label-1": {"results": [',      # 4 broken JSON
        _old("", "play_music()"),                                             # 5 no utterance
        json.dumps({"data": {"source": "没有标注"}}, ensure_ascii=False),     # 6 no label key
        json.dumps({"data": {"source": "坏的标注"}, "label-9": {"results": [{"MarkResult": "{not json"}]}},
                   ensure_ascii=False),                                       # 7 MarkResult not JSON
        _old(["帮我查一下上海的天气", "那北京呢"], "weather_search(北京)"),     # 8 multi-turn source
        _new("帮我查下北京的天气，顺便放首歌", ["weather_search(北京)", "play_music()"]),  # 9 label list
        "[1, 2]",                                                             # 10 not an object
    ]
    result = convert_manifest(lines)
    assert result.examples == [
        IntentExample("我想听音乐", "play_music()"),
        IntentExample("我想去杭州玩,帮我查下天气预报", "weather_search(杭州)"),
        IntentExample("帮我查一下上海的天气\n那北京呢", "weather_search(北京)"),
        IntentExample("帮我查下北京的天气，顺便放首歌", "weather_search(北京);play_music()"),
    ]
    assert result.lines == 9
    assert [s.line for s in result.skipped] == [4, 5, 6, 7, 10]
    reasons = {s.line: s.reason for s in result.skipped}
    assert "not JSON" in reasons[4]
    assert "data.source" in reasons[5]
    assert "label-" in reasons[6]
    assert "MarkResult" in reasons[7]
    assert "object" in reasons[10]
    assert result.examples[2].is_multi_turn and not result.examples[0].is_multi_turn


def test_label_key_picks_one_labelling_job():
    line = json.dumps({"data": {"source": "放首歌"}, "label-1": {"results": [{"data": "wrong()"}]},
                       "label-2": {"results": [{"data": "play_music()"}]}})
    assert convert_manifest([line]).examples[0].output == "wrong()"  # first label- key by default
    assert convert_manifest([line], label_key="label-2").examples[0].output == "play_music()"
    skipped = convert_manifest([line], label_key="label-3").skipped
    assert skipped and "label-3" in skipped[0].reason


def test_example_manifests_and_the_convert_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    old = convert_manifest_file(EXAMPLES / "itag_old.manifest")
    new = convert_manifest_file(EXAMPLES / "itag_new.manifest")
    assert not old.skipped and len(old.examples) == 5
    assert [s.line for s in new.skipped] == [4] and len(new.examples) == 3
    out = tmp_path / "train.json"
    assert main(["convert", str(EXAMPLES / "itag_old.manifest"), str(EXAMPLES / "itag_new.manifest"),
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 8 example(s)" in captured.out and "skipped line 4" in captured.err
    assert load_examples(out) == old.examples + new.examples
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data[0] == {"instruction": "我想听音乐", "output": "play_music()"}
    assert "我想听音乐" in out.read_text(encoding="utf-8")  # Chinese written as is, not \u-escaped


def test_convert_with_nothing_usable_fails(tmp_path: Path):
    manifest = tmp_path / "bad.manifest"
    manifest.write_text("not json\n", encoding="utf-8")
    assert main(["convert", str(manifest), "-o", str(tmp_path / "out.json")]) == 1
    assert not (tmp_path / "out.json").exists()


def test_load_examples_errors_name_the_problem(tmp_path: Path):
    jsonl = tmp_path / "a.json"
    jsonl.write_text(_old("我想听音乐", "play_music()") + "\n" + _old("放歌", "play_music()") + "\n", encoding="utf-8")
    with pytest.raises(IntentDataError, match="convert"):
        load_examples(jsonl)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps([{"instruction": "我想听音乐", "output": "play_music()"}, {"instruction": "x"}]),
                   encoding="utf-8")
    with pytest.raises(IntentDataError, match=r"b\.json\[1\].*'output'"):
        load_examples(bad)
    with pytest.raises(IntentDataError, match="cannot read"):
        load_examples(tmp_path / "missing.json")


def test_turns_are_joined_and_files_round_trip(tmp_path: Path):
    assert join_turns(["查下上海天气", " 那北京呢 "]) == "查下上海天气\n那北京呢"
    messages = [{"role": "user", "content": "放首歌"}, {"role": "assistant", "content": "好的"},
                {"role": "user", "content": "声音太小了"}]
    assert join_turns(messages) == "放首歌\n声音太小了"
    with pytest.raises(IntentDataError):
        join_turns([{"role": "assistant", "content": "only me"}])
    examples = [IntentExample("放首歌\n声音太小了", "volume_up()"), IntentExample("我想听音乐", "play_music()")]
    path = save_examples(examples, tmp_path / "sub" / "data.json")
    assert load_examples(path) == examples
    listed = tmp_path / "turns.json"
    listed.write_text(json.dumps([{"instruction": ["放首歌", "声音太小了"], "output": "volume_up()"}]), encoding="utf-8")
    assert load_examples(listed) == examples[:1]


@pytest.mark.parametrize("text, calls", [
    ("play_music()", [FunctionCall("play_music")]),
    ("weather_search(杭州)", [FunctionCall("weather_search", ("杭州",))]),
    ("weather_search(北京);play_music()", [FunctionCall("weather_search", ("北京",)), FunctionCall("play_music")]),
    ("play_music", [FunctionCall("play_music")]),                                    # no parentheses
    ("好的，weather_search(杭州)。", [FunctionCall("weather_search", ("杭州",))]),      # extra text
    ("play_music() Hello the model (", [FunctionCall("play_music")]),                # trailing text
    ("set_alarm(明天, '七点')；volume_up（）", [FunctionCall("set_alarm", ("明天", "七点")), FunctionCall("volume_up")]),
    ("navigate_to(虹桥火车站", [FunctionCall("navigate_to", ("虹桥火车站",))]),       # cut short: unclosed
    ("a(1) b(", [FunctionCall("a", ("1",))]),                                       # unclosed after a call: noise
    ("我不知道", []),
    ("", []),
])
def test_parse_calls(text: str, calls: list[FunctionCall]):
    assert parse_calls(text) == calls


def _examples(spec: dict[str, tuple[int, int]]) -> list[IntentExample]:
    """``{intent: (single-turn count, multi-turn count)}`` -> examples with distinct instructions."""
    out = []
    for intent, (single, multi) in spec.items():
        out += [IntentExample(f"{intent} 单轮 {i}", f"{intent}()") for i in range(single)]
        out += [IntentExample(f"{intent} 第一轮 {i}\n第二轮", f"{intent}()") for i in range(multi)]
    return out


def test_check_passes_data_that_meets_the_guidance():
    report = check_examples(_examples({"play_music": (50, 10), "volume_up": (60, 12)}))
    assert report.warnings == ()
    assert (report.total, report.single_turn, report.multi_turn) == (132, 110, 22)
    assert [(c.intent, c.examples, c.single_turn, c.multi_turn) for c in report.counts] == [
        ("volume_up", 72, 60, 12), ("play_music", 60, 50, 10)]
    assert "no warnings" in format_report(report)


def test_check_warns_where_the_guidance_is_not_met():
    examples = _examples({"play_music": (200, 5), "volume_up": (20, 0), "music_exit": (0, 30)})
    examples.append(IntentExample("play_music 单轮 0", "volume_up()"))  # same words, another label
    examples.append(IntentExample("随便说说", "好的"))                  # no function call
    report = check_examples(examples)
    text = "\n".join(report.warnings)
    assert len(report.warnings) == 6, text
    assert "volume_up (21)" in text and "50-100" in text                 # too few examples
    assert "unbalanced" in text and "play_music" in text                 # 205 vs 21
    assert "35 multi-turn example(s) are 16% of the 222 single-turn" in text
    assert "only in multi-turn examples: music_exit" in text
    assert "labelled differently" in text and "play_music 单轮 0" in text
    assert "no function call" in text
    counts = {c.intent: c for c in report.counts}
    assert counts["music_exit"].single_turn == 0 and counts["music_exit"].multi_turn == 30


def test_multi_intent_examples_count_for_each_intent():
    report = check_examples([IntentExample("查天气再放歌", "weather_search(北京);play_music()"),
                             IntentExample("放歌", "play_music()")], min_per_intent=1)
    assert {c.intent: c.examples for c in report.counts} == {"play_music": 2, "weather_search": 1}
    assert report.multi_intent == 1


def test_check_command_on_the_example_data(capsys: pytest.CaptureFixture):
    assert main(["check", str(EXAMPLES / "train.json")]) == 0
    out = capsys.readouterr().out
    assert "7 intents" in out and "weather_search" in out and "fewer than 50 examples" in out
    assert main(["check", "--strict", str(EXAMPLES / "train.json")]) == 1
    assert main(["check", "--min-per-intent", "10", "--strict", str(EXAMPLES / "train.json")]) == 0
    assert main(["check", str(EXAMPLES / "no-such.json")]) == 2
