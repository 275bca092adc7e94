"""Unit tests of services.common.dataset.validate: every row check, the streaming reader (JSONL, JSON
array, BOM, CRLF, bad UTF-8, oversized and truncated rows) and the statistics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from services.common.errors import Cancelled, InvalidArgument, NotFound
from services.common.dataset import dedupe, reader
from services.common.dataset import parallel as dataset_parallel
from services.common.dataset import validate as validation
from services.common.dataset.validate import (
    DuplicateCounter,
    LengthStats,
    RowError,
    RowReader,
    explain_row,
    parse_row,
    validate_file,
    validate_rows_for_training,
)

def row(*messages: tuple[str, str], **extra) -> dict:
    return {"conversations": [{"role": r, "content": c} for r, c in messages], **extra}


GOOD = row(("user", "你好"), ("assistant", "你好！我是AI助手，很高兴为您服务。"))
GOOD_SYS = row(("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello!"),
               ("user", "介绍一下Python"), ("assistant", "Python是一种高级编程语言。"))


def write_jsonl(path: Path, rows: list, *, newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
                        for r in rows) + newline
    data = text.encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def only_issue(report) -> validation.DatasetIssue:
    assert len(report.issues) == 1, report.issues
    return report.issues[0]


# ------------------------------------------------------------------------------------------
# The original's sample and the happy path


def test_original_sample_is_valid(tmp_path):
    lines = [json.dumps(GOOD, ensure_ascii=False)] * 3
    report = validate_file(write_jsonl(tmp_path / "train.json", lines))
    assert report.is_valid
    assert (report.total_samples, report.valid_samples, report.invalid_samples) == (3, 3, 0)
    assert report.error_messages == [] and report.issues == []
    assert report.detected_format == "conversations"
    assert report.stats.exact_duplicates == 2


def test_shared_sample_file_is_valid():
    sample = Path("/work/shared/data/train_sample.jsonl")
    if not sample.exists():
        pytest.skip("shared sample not present")
    report = validate_file(sample)
    assert report.is_valid and report.total_samples == 5


def test_system_first_and_multi_turn_is_valid(tmp_path):
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [GOOD_SYS, GOOD]))
    assert report.is_valid
    assert report.stats.messages_per_role == {"system": 1, "user": 3, "assistant": 3}


# ------------------------------------------------------------------------------------------
# Every check, with its message


@pytest.mark.parametrize("obj, field, code, message", [
    ([1, 2], "", "not_an_object", "row must be a JSON object, got array"),
    ("text", "", "not_an_object", "row must be a JSON object, got string"),
    ({"messages": []}, "conversations", "missing_conversations",
     '"conversations" is missing (the row looks like the openai format; ProcessDataset '
     "converts it)"),
    ({"id": 1}, "conversations", "missing_conversations", '"conversations" is missing'),
    ({"conversations": "hi"}, "conversations", "invalid_conversations",
     "conversations must be a non-empty list, got string"),
    ({"conversations": []}, "conversations", "empty_conversations",
     "conversations must be a non-empty list, got an empty list"),
    ({"conversations": [{"role": "user", "content": "q"}, "a"]}, "conversations[1]",
     "invalid_message", "conversations[1] must be an object, got string"),
    ({"conversations": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
     "conversations[0].role", "missing_role", "conversations[0].role is missing"),
    ({"conversations": [{"role": 1, "content": "q"}, {"role": "assistant", "content": "a"}]},
     "conversations[0].role", "bad_role", "conversations[0].role must be a string, got number"),
    (row(("user", "q"), ("bot", "a")), "conversations[1].role", "bad_role",
     'conversations[1].role must be "user" or "assistant", got "bot"'),
    (row(("User", "q"), ("assistant", "a")), "conversations[0].role", "bad_role",
     'conversations[0].role must be "system", "user" or "assistant", got "User"'),
    (row(("user", "q"), ("system", "s"), ("assistant", "a")), "conversations[1].role",
     "misplaced_system",
     'conversations[1].role is "system", which is allowed only in the first message'),
    ({"conversations": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
     "conversations[0].content", "missing_content", "conversations[0].content is missing"),
    ({"conversations": [{"role": "user", "content": None},
                        {"role": "assistant", "content": "a"}]},
     "conversations[0].content", "invalid_content",
     "conversations[0].content must be a string, got null"),
    ({"conversations": [{"role": "user", "content": ["x"]},
                        {"role": "assistant", "content": "a"}]},
     "conversations[0].content", "invalid_content",
     "conversations[0].content must be a string, got array"),
    (row(("user", "q"), ("assistant", "")), "conversations[1].content", "empty_content",
     "conversations[1].content is empty"),
    (row(("user", " \n\u3000 "), ("assistant", "a")), "conversations[0].content",
     "empty_content", "conversations[0].content is blank (only whitespace)"),
    (row(("assistant", "a"), ("user", "q")), "conversations[0].role", "bad_turn_order",
     'conversations[0].role must be "user" (a conversation starts with the user, after an '
     'optional system message), got "assistant"'),
    (row(("system", "s"), ("assistant", "a")), "conversations[1].role", "bad_turn_order",
     'conversations[1].role must be "user" (a conversation starts with the user, after an '
     'optional system message), got "assistant"'),
    (row(("user", "q"), ("user", "q2"), ("assistant", "a")), "conversations[1].role",
     "bad_turn_order",
     'conversations[1].role must be "assistant" (turns alternate between user and '
     'assistant), got "user"'),
    (row(("user", "q"), ("assistant", "a"), ("user", "q2")), "conversations[2].role",
     "bad_turn_order",
     'a conversation must end with an assistant message; conversations[2] is "user"'),
    (row(("user", "q")), "conversations[0].role", "bad_turn_order",
     'a conversation must end with an assistant message; conversations[0] is "user"'),
    (row(("system", "s")), "conversations", "no_turns",
     "conversations has only a system message; it needs a user message and an assistant "
     "reply"),
])
def test_each_row_check(tmp_path, obj, field, code, message):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, json.dumps(obj, ensure_ascii=False)])
    report = validate_file(path)
    assert not report.is_valid
    assert (report.total_samples, report.valid_samples, report.invalid_samples) == (3, 2, 1)
    issue = only_issue(report)
    assert (issue.line, issue.field, issue.code) == (3, field, code)
    assert issue.message == f"line 3: {message}"
    assert report.error_messages == [issue.message]
    assert explain_row(obj) and explain_row(obj)[0] == (field, code, message)


def test_issue_example_from_the_spec(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, row(("user", "q"), ("bot", "a"))])
    assert validate_file(path).error_messages == [
        'line 3: conversations[1].role must be "user" or "assistant", got "bot"']


def test_several_problems_in_one_row_are_all_listed(tmp_path):
    bad = {"conversations": [{"role": "bot", "content": ""}, {"role": "assistant"}]}
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [bad]))
    assert [i.code for i in report.issues] == ["bad_role", "empty_content", "missing_content"]
    assert report.invalid_samples == 1


def test_sharegpt_rows_get_a_hint(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [sharegpt, sharegpt]))
    assert report.detected_format == "sharegpt"
    assert report.invalid_samples == 2
    assert "ShareGPT" in report.error_messages[0]


def test_lone_surrogate_escape_is_invalid_unicode(tmp_path):
    text = '{"conversations": [{"role": "user", "content": "a\\ud800b"}, ' \
           '{"role": "assistant", "content": "ok"}]}'
    emoji = '{"conversations": [{"role": "user", "content": "\\ud83d\\ude00"}, ' \
            '{"role": "assistant", "content": "ok"}]}'
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [text, emoji]))
    issue = only_issue(report)
    assert (issue.line, issue.field, issue.code) == (1, "conversations[0].content",
                                                     "invalid_unicode")
    assert report.valid_samples == 1  # a proper surrogate pair (an emoji) is fine


# ------------------------------------------------------------------------------------------
# JSON problems, bytes, sizes


def test_invalid_json_and_truncated_last_line(tmp_path):
    good = json.dumps(GOOD, ensure_ascii=False)
    path = tmp_path / "d.jsonl"
    path.write_text(good + "\n" + '{"conversations": [}' + "\n" + good + "\n" + good[:25],
                    encoding="utf-8")
    report = validate_file(path)
    assert (report.total_samples, report.valid_samples, report.invalid_samples) == (4, 2, 2)
    codes = [(i.line, i.code) for i in report.issues]
    assert codes == [(2, "invalid_json"), (4, "truncated_json")]
    assert report.issues[0].message.startswith("line 2: invalid JSON: Expecting value at column")
    assert "truncated" in report.issues[1].message


def test_extra_data_and_nan_are_invalid_json(tmp_path):
    good = json.dumps(GOOD, ensure_ascii=False)
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [
        good + " {}", '{"conversations": NaN}', good]))
    assert [(i.line, i.code) for i in report.issues] == [(1, "invalid_json"), (2, "invalid_json")]
    assert "extra data" in report.issues[0].message
    assert "NaN" in report.issues[1].message


def test_deep_nesting_is_a_row_error_not_a_crash(tmp_path):
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [GOOD, "[" * 100_000]))
    assert report.invalid_samples == 1 and report.valid_samples == 1
    assert report.issues[0].code == "invalid_json"


def test_non_utf8_bytes_are_a_row_error(tmp_path):
    good = json.dumps(GOOD, ensure_ascii=False).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + b"\n" + good.replace("你好".encode(), b"\xff\xfe", 1) + b"\n" + good)
    report = validate_file(path)
    issue = only_issue(report)
    assert (issue.line, issue.code) == (2, "invalid_utf8")
    assert "0xff" in issue.message and "not valid UTF-8" in issue.message
    assert report.valid_samples == 2


def test_row_over_the_limit_is_a_row_error(tmp_path):
    long_row = row(("user", "x" * 5000), ("assistant", "y"))
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [GOOD, long_row, GOOD]),
                           max_row_bytes=1000)
    issue = only_issue(report)
    assert (issue.line, issue.code) == (2, "row_too_long")
    size = len(json.dumps(long_row))
    assert issue.message == f"line 2: row is {size} bytes, over the 1000-byte limit"


def test_row_just_at_the_limit_passes(tmp_path):
    text = json.dumps(GOOD, ensure_ascii=False)
    size = len(text.encode())
    path = write_jsonl(tmp_path / "d.jsonl", [text], newline="\r\n")
    assert validate_file(path, max_row_bytes=size).is_valid
    assert validate_file(path, max_row_bytes=size - 1).issues[0].code == "row_too_long"


def test_fifty_megabyte_line_is_one_error_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    good = json.dumps(GOOD, ensure_ascii=False).encode()
    with open(path, "wb") as f:
        f.write(good + b"\n")
        f.write(b'{"conversations": [{"role": "user", "content": "')
        chunk = b"a" * (1 << 20)
        for _ in range(50):
            f.write(chunk)
        f.write(b'"}, {"role": "assistant", "content": "b"}]}\n')
        f.write(good + b"\n")
    report = validate_file(path)
    assert (report.total_samples, report.valid_samples) == (3, 2)
    issue = only_issue(report)
    assert (issue.line, issue.code) == (2, "row_too_long")
    assert "52428" in issue.message  # the whole size is reported


def test_bom_crlf_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.json", [GOOD, "", "   ", GOOD_SYS], newline="\r\n", bom=True)
    report = validate_file(path)
    assert report.is_valid and report.total_samples == 2
    # line numbers stay physical lines
    path2 = write_jsonl(tmp_path / "e.json", [GOOD, "", row(("user", "q"))], newline="\r\n",
                        bom=True)
    assert validate_file(path2).issues[0].line == 3


def test_chinese_text_counts_characters(tmp_path):
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [GOOD]))
    assert report.stats.chars.max == len("你好") + len("你好！我是AI助手，很高兴为您服务。")


# ------------------------------------------------------------------------------------------
# JSON array files


def test_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, GOOD_SYS, row(("user", "q"), ("bot", "a"))],
                               ensure_ascii=False, indent=2), encoding="utf-8")
    report = validate_file(path)
    assert report.file_kind == "json_array"
    assert (report.total_samples, report.valid_samples) == (3, 2)
    assert report.error_messages == [
        'row 3: conversations[1].role must be "user" or "assistant", got "bot"']


def test_json_array_with_tricky_strings_in_tiny_chunks(tmp_path, monkeypatch):
    tricky = row(("user", 'a "quoted" ], {brace} [x] \\ back\\slash, "'),
                 ("assistant", "中文，逗号]}"))
    rows = [GOOD, tricky, GOOD_SYS, tricky]
    path = tmp_path / "d.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, ensure_ascii=False).encode())
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(reader, "_READ_CHUNK", chunk)
        report = validate_file(path)
        assert report.is_valid and report.total_samples == 4, chunk
        assert report.stats.chars.max == max(
            sum(len(m["content"]) for m in r["conversations"]) for r in rows)


def test_json_array_broken_element_does_not_hide_the_next(tmp_path):
    good = json.dumps(GOOD, ensure_ascii=False)
    path = tmp_path / "d.json"
    path.write_text(f'[\n{good},\n{{"conversations": [1 2]}},\n{good} {good},\n{good}\n]\n',
                    encoding="utf-8")
    report = validate_file(path)
    assert (report.total_samples, report.valid_samples) == (4, 2)
    assert [(i.line, i.code) for i in report.issues] == [(2, "invalid_json"), (3, "invalid_json")]


def test_json_array_truncated_and_trailing_data(tmp_path):
    good = json.dumps(GOOD, ensure_ascii=False)
    truncated = tmp_path / "t.json"
    truncated.write_text(f"[{good}, {good[:30]}", encoding="utf-8")
    report = validate_file(truncated)
    assert (report.total_samples, report.valid_samples) == (2, 1)
    assert [i.code for i in report.issues] == ["truncated_json", "unterminated_array"]
    assert not report.is_valid

    trailing = tmp_path / "x.json"
    trailing.write_text(f"[{good}]\n{good}\n", encoding="utf-8")
    report = validate_file(trailing)
    assert report.valid_samples == 1 and not report.is_valid
    assert [i.code for i in report.issues] == ["trailing_data"]

    comma = tmp_path / "c.json"
    comma.write_text(f"[{good},]", encoding="utf-8")
    report = validate_file(comma)
    assert report.total_samples == 1 and [i.code for i in report.issues] == ["trailing_comma"]


def test_json_array_element_over_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "_READ_CHUNK", 100)
    big = row(("user", "x" * 3000), ("assistant", "y"))
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, big, GOOD]), encoding="utf-8")
    report = validate_file(path, max_row_bytes=500)
    assert (report.total_samples, report.valid_samples) == (3, 2)
    issue = only_issue(report)
    assert (issue.line, issue.code) == (2, "row_too_long")
    assert f"row is {len(json.dumps(big))} bytes" in issue.message


def test_json_array_non_utf8_element(tmp_path):
    good = json.dumps(GOOD).encode()
    path = tmp_path / "d.json"
    path.write_bytes(b"[" + good + b"," + good.replace(b"user", b"us\xc3er", 1) + b"]")
    report = validate_file(path)
    assert [(i.line, i.code) for i in report.issues] == [(2, "invalid_utf8")]


# ------------------------------------------------------------------------------------------
# File-level errors


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        validate_file(tmp_path / "nope.jsonl")


def test_directory_is_invalid_argument(tmp_path):
    with pytest.raises(InvalidArgument) as err:
        validate_file(tmp_path)
    assert "directory" in str(err.value)
    assert err.value.field_violations[0][0] == "file_path"


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"\xef\xbb\xbf", b"[]", b"  [ ]  "])
def test_empty_files_are_invalid_argument(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(InvalidArgument) as err:
        validate_file(path, field="dataset_path")
    assert err.value.field_violations[0][0] == "dataset_path"
    assert "empty" in str(err.value) or "no rows" in str(err.value)


# ------------------------------------------------------------------------------------------
# Limits, statistics, cancellation


def test_max_errors_truncates_and_counts_everything(tmp_path):
    bad = row(("user", "q"), ("bot", "a"))
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [bad] * 30 + [GOOD]), max_errors=5)
    assert len(report.issues) == 5 and len(report.error_messages) == 5
    assert report.errors_truncated
    assert report.issue_counts == {"bad_role": 30}
    assert (report.invalid_samples, report.valid_samples) == (30, 1)
    assert not validate_file(write_jsonl(tmp_path / "e.jsonl", [bad] * 5),
                             max_errors=5).errors_truncated


def test_statistics(tmp_path):
    rows = [GOOD, GOOD, GOOD_SYS, row(("user", "ab"), ("assistant", "cd")),
            row(("user", "q"), ("bot", "a"))]
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", rows))
    stats = report.stats
    assert stats.messages_per_role == {"system": 1, "user": 5, "assistant": 5}
    assert stats.exact_duplicates == 1
    assert (stats.turns.min, stats.turns.p50, stats.turns.max) == (2, 2, 5)
    assert stats.turns.mean == pytest.approx((2 + 2 + 5 + 2) / 4)
    sys_chars = sum(len(m["content"]) for m in GOOD_SYS["conversations"])
    assert stats.chars.min == 4 and stats.chars.max == sys_chars
    assert stats.chars.p50 == len("你好") + len("你好！我是AI助手，很高兴为您服务。")


def test_length_stats_nearest_rank():
    stats = LengthStats.from_counts({v: 1 for v in range(1, 101)})
    assert (stats.min, stats.p50, stats.p90, stats.p99, stats.max) == (1, 50, 90, 99, 100)
    assert stats.mean == 50.5
    assert LengthStats.from_counts({}) == LengthStats()
    assert LengthStats.from_counts({7: 3}).p99 == 7


def test_duplicate_counter_spills_to_disk_with_the_same_answer():
    rnd = random.Random(5)
    values = [rnd.getrandbits(64) - (1 << 63) for _ in range(5000)]
    values += values[:1234] + values[:10]
    rnd.shuffle(values)
    in_memory = DuplicateCounter()
    spilling = DuplicateCounter(spill_at=97)
    for i, v in enumerate(values):
        in_memory.add(v, i)
        spilling.add(v, i)
    try:
        for counter in (in_memory, spilling):
            pairs = list(validation.iter_buckets(counter.folder(), counter.buckets))
            assert sum(len(b) for b in pairs) == 2 * len(values)
            assert sum(1 for _ in dedupe.find_duplicates(pairs, lambda i, j: True)) == 1244
    finally:
        spilling.close()


def test_cancellation(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 10)
    with pytest.raises(Cancelled):
        validate_file(path, should_stop=lambda: True)


def test_training_gate(tmp_path):
    good = write_jsonl(tmp_path / "g.jsonl", [GOOD, GOOD_SYS])
    assert validate_rows_for_training(good).valid_samples == 2
    bad = write_jsonl(tmp_path / "b.jsonl", [GOOD, row(("user", "q"), ("bot", "a"))])
    with pytest.raises(InvalidArgument) as err:
        validate_rows_for_training(bad)
    assert err.value.field_violations[0][0] == "dataset_path"
    assert 'line 2: conversations[1].role must be "user" or "assistant", got "bot"' \
        in str(err.value)


def test_parse_row():
    assert parse_row('{"a": 1}') == {"a": 1}
    assert parse_row('  {"a": 1}  ') == {"a": 1}
    err = parse_row('{"a": ')
    assert isinstance(err, RowError) and err.code == "truncated_json"


# ------------------------------------------------------------------------------------------
# The fast path and the explanation agree on every row


def _mutations(rnd: random.Random) -> object:
    base = json.loads(json.dumps(rnd.choice([GOOD, GOOD_SYS])))
    conv = base["conversations"]
    kind = rnd.randrange(16)
    i = rnd.randrange(len(conv))
    if kind == 0:
        conv[i]["role"] = rnd.choice(["bot", "User", "", None, 3, "system"])
    elif kind == 1:
        conv[i]["content"] = rnd.choice(["", " ", "\u3000", None, 0, [], {"a": 1}, True, "x"])
    elif kind == 2:
        del conv[i][rnd.choice(["role", "content"])]
    elif kind == 3:
        conv[i] = rnd.choice(["s", 1, None, [1]])
    elif kind == 4:
        conv.pop(i)
    elif kind == 5:
        conv.append(dict(conv[i]))
    elif kind == 6:
        rnd.shuffle(conv)
    elif kind == 7:
        base["conversations"] = rnd.choice([[], {}, "x", None, 0])
    elif kind == 8:
        return rnd.choice([[], 1, "x", None, {"messages": conv}])
    elif kind == 9:
        conv.insert(rnd.randrange(len(conv) + 1), {"role": "system", "content": "s"})
    elif kind == 10:
        base["conversations"] = conv[:1]
    return base


def test_fast_path_agrees_with_explain_row(tmp_path):
    rnd = random.Random(1234)
    rows = [_mutations(rnd) for _ in range(3000)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = validate_file(path, max_errors=100_000)
    invalid_lines = {i.line for i in report.issues}
    expected = {n for n, obj in enumerate(rows, 1) if explain_row(obj)}
    assert invalid_lines == expected
    assert report.invalid_samples == len(expected)
    assert report.valid_samples == len(rows) - len(expected)


def test_reader_yields_bytes_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n  \n' + b"x" * 50 + b"\n[1]")
    reader = RowReader(path, max_row_bytes=20)
    items = list(reader)
    assert items[0] == (1, b'{"a": 1}')
    assert items[1][0] == 4 and isinstance(items[1][1], RowError)
    assert items[2] == (5, b"[1]")
    assert reader.label == "line"


# ------------------------------------------------------------------------------------------
# Several worker processes give the same report as one


def test_parallel_workers_give_the_same_report(tmp_path, monkeypatch):
    rnd = random.Random(99)
    rows = [_mutations(rnd) if rnd.random() < 0.2 else rnd.choice([GOOD, GOOD_SYS])
            for _ in range(4000)]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[10] = lines[10][:20]  # truncated
    lines[2500] = ""  # blank
    path = write_jsonl(tmp_path / "d.jsonl", lines, newline="\r\n", bom=True)
    with open(path, "ab") as f:
        f.write(b'{"conversations": [{"role": "user", "content": "\xff"}]}\r\n')
    single = validate_file(path, workers=1, max_errors=10_000)
    monkeypatch.setattr(dataset_parallel, "PARALLEL_MIN_BYTES", 20_000)
    assert len(validation.plan_ranges(path, path.stat().st_size, 3)) == 3
    parallel = validate_file(path, workers=3, max_errors=10_000)
    assert parallel == single
    assert single.stats.exact_duplicates > 0 and single.invalid_samples > 0
    few = validate_file(path, workers=3, max_errors=7)
    assert few.issues == single.issues[:7] and few.errors_truncated


def test_plan_ranges_align_to_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_parallel, "PARALLEL_MIN_BYTES", 10)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"a" * 50 + b"\n" + b"b" * 5 + b"\n" + b"c" * 30 + b"\n")
    ranges = validation.plan_ranges(path, path.stat().st_size, 4)
    data = path.read_bytes()
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert b == c and data[b - 1:b] == b"\n"
    assert validation.plan_ranges(path, path.stat().st_size, 1) == [(0, None)]
