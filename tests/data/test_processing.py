"""Unit tests of services.data.processing: formats in, byte-exact JSONL out, deduplication,
deterministic splits, ratio errors, output-folder ownership and atomic writes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from services.common.errors import AlreadyExists, Cancelled, InvalidArgument, NotFound
from services.common.dataset import parallel as dataset_parallel
from services.data import processing
from services.data.processing import MANIFEST_NAME, SplitSpec, process_file
from services.common.dataset.validate import validate_file


def conv(*messages):
    return {"conversations": [{"role": r, "content": c} for r, c in messages]}


def numbered(n: int) -> list[dict]:
    return [conv(("user", f"问题 {i}"), ("assistant", f"回答 {i}，好的。")) for i in range(n)]


def write_jsonl(path: Path, rows: list, newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
                        for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def original_lines(rows: list[dict]) -> str:
    """How the original wrote rows: json.dumps(item, ensure_ascii=False) + '\\n'."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or "spool" in p.name)


# ------------------------------------------------------------------------------------------
# Output exactly as the original wrote it


def test_processed_json_is_byte_identical_to_the_original(tmp_path):
    rows = numbered(5)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    report = process_file(src, tmp_path / "out")
    out = tmp_path / "out" / "processed.json"
    assert out.read_text(encoding="utf-8") == original_lines(rows)
    assert "问题" in out.read_text(encoding="utf-8")  # Chinese unescaped
    assert report.mode == "single" and report.kept_samples == 5 and report.train_samples == 0
    assert [f.path.name for f in report.files] == ["processed.json"]
    assert report.files[0].size_bytes == out.stat().st_size and report.files[0].rows == 5
    assert report.detected_format == "conversations"
    assert leftovers(tmp_path / "out") == []


def test_split_matches_the_original_algorithm(tmp_path):
    rows = numbered(50)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    report = process_file(src, tmp_path / "out", split=SplitSpec(seed=7))
    # The original: random.seed(seed); random.shuffle(copy); int() cut points.
    data = list(rows)
    random.seed(7)
    random.shuffle(data)
    expected = {"train": data[:40], "val": data[40:45], "test": data[45:]}
    for name, part in expected.items():
        assert (tmp_path / "out" / f"{name}.json").read_text(encoding="utf-8") == \
            original_lines(part)
    assert (report.train_samples, report.val_samples, report.test_samples) == (40, 5, 5)
    assert [f.path.name for f in report.files] == ["train.json", "val.json", "test.json"]


def test_split_is_deterministic_and_seed_dependent(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(200))
    contents = []
    for run, seed in enumerate((1, 1, 2)):
        out = tmp_path / f"out{run}"
        process_file(src, out, split=SplitSpec(0.7, 0.2, 0.1, seed=seed))
        contents.append([(out / n).read_bytes() for n in processing.SPLIT_FILES])
    assert contents[0] == contents[1]
    assert contents[0] != contents[2]


def test_no_shuffle_keeps_input_order(tmp_path):
    rows = numbered(10)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    process_file(src, tmp_path / "out", split=SplitSpec(shuffle=False))
    assert read_jsonl(tmp_path / "out" / "train.json") == rows[:8]
    assert read_jsonl(tmp_path / "out" / "val.json") == rows[8:9]
    assert read_jsonl(tmp_path / "out" / "test.json") == rows[9:]


@pytest.mark.parametrize("n, expected", [
    (1, (1, 0, 0)), (2, (2, 0, 0)), (3, (3, 0, 0)), (5, (4, 1, 0)), (10, (8, 1, 1)),
    (15, (12, 2, 1)), (100, (80, 10, 10)), (1001, (801, 100, 100)),
])
def test_split_counts(n, expected):
    counts = SplitSpec().counts(n)
    assert counts == expected and sum(counts) == n


def test_split_counts_never_lose_rows():
    rnd = random.Random(3)
    for _ in range(500):
        a, b = sorted(rnd.random() for _ in range(2))
        spec = SplitSpec(a, b - a, 1 - b)
        n = rnd.randrange(0, 2000)
        counts = spec.counts(n)
        assert sum(counts) == n and min(counts) >= 0
        for share, ratio in zip(counts, (spec.train_ratio, spec.val_ratio, spec.test_ratio)):
            assert abs(share - n * ratio) < 1 + 1e-9
    assert SplitSpec(0.0, 0.0, 1.0).counts(3) == (0, 0, 3)
    assert SplitSpec(0.29, 0.71, 0.0).counts(100) == (29, 71, 0)


def test_one_row_input(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(1))
    report = process_file(src, tmp_path / "out", split=SplitSpec())
    assert (report.train_samples, report.val_samples, report.test_samples) == (1, 0, 0)
    assert (tmp_path / "out" / "val.json").read_bytes() == b""
    assert (tmp_path / "out" / "test.json").exists()


# ------------------------------------------------------------------------------------------
# Argument errors


@pytest.mark.parametrize("spec, fields", [
    (SplitSpec(1.5, 0.1, 0.1), ["split_config.train_ratio"]),
    (SplitSpec(0.8, -0.1, 0.3), ["split_config.val_ratio"]),
    (SplitSpec(0.8, 0.1, float("nan")), ["split_config.test_ratio"]),
    (SplitSpec(0.8, 0.1, 0.2), ["split_config"]),
    (SplitSpec(0.5, 0.1, 0.1), ["split_config"]),
])
def test_ratio_errors_name_the_field(tmp_path, spec, fields):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(3))
    with pytest.raises(InvalidArgument) as err:
        process_file(src, tmp_path / "out", split=spec)
    assert [f for f, _ in err.value.field_violations] == fields
    assert not (tmp_path / "out").exists()


def test_ratio_sum_tolerance():
    SplitSpec(0.8, 0.1, 0.1 + 5e-7).check()
    with pytest.raises(InvalidArgument):
        SplitSpec(0.8, 0.1, 0.1 + 5e-6).check()


def test_bad_format_type(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(3))
    with pytest.raises(InvalidArgument) as err:
        process_file(src, tmp_path / "out", format_type="csv")
    assert err.value.field_violations[0][0] == "format_type"


def test_input_errors(tmp_path):
    with pytest.raises(NotFound):
        process_file(tmp_path / "missing.jsonl", tmp_path / "out")
    with pytest.raises(InvalidArgument) as err:
        process_file(tmp_path, tmp_path / "out")
    assert err.value.field_violations[0][0] == "input_file"
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InvalidArgument):
        process_file(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_dir_is_a_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(3))
    with pytest.raises(InvalidArgument) as err:
        process_file(src, src)
    assert err.value.field_violations[0][0] == "output_dir"


def test_nothing_left_to_write(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["{bad", conv(("user", "only a question"))])
    with pytest.raises(InvalidArgument, match="no row can be written") as err:
        process_file(src, tmp_path / "out")
    assert "invalid_json: 1" in str(err.value) and "no_complete_turn: 1" in str(err.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# Formats, normalisation, drops and duplicates


def test_every_format_is_normalised(tmp_path):
    inputs = {
        "sharegpt": {"conversations": [{"from": "human", "value": "问"},
                                       {"from": "gpt", "value": "答"}]},
        "openai": {"messages": [{"role": "user", "content": "问"},
                                {"role": "assistant", "content": "答"}]},
        "alpaca": {"instruction": "问", "input": "", "output": "答"},
        "conversations": conv(("user", "问"), ("assistant", "答")),
    }
    for fmt, obj in inputs.items():
        src = write_jsonl(tmp_path / f"{fmt}.jsonl", [obj])
        for requested in ("auto", fmt):
            out = tmp_path / f"out-{fmt}-{requested}"
            report = process_file(src, out, format_type=requested)
            assert report.detected_format == fmt
            assert (out / "processed.json").read_text(encoding="utf-8") == \
                original_lines([conv(("user", "问"), ("assistant", "答"))])
            assert validate_file(out / "processed.json").is_valid


def test_mixed_formats_are_refused_in_auto_and_filtered_when_explicit(tmp_path):
    rows = numbered(3) + [{"instruction": "i", "output": "o"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(InvalidArgument) as err:
        process_file(src, tmp_path / "out")
    assert err.value.field_violations[0][0] == "input_file"
    assert "line 1 is conversations, line 4 is alpaca" in str(err.value)
    assert not (tmp_path / "out").exists()
    report = process_file(src, tmp_path / "out", format_type="conversations")
    assert report.kept_samples == 3 and report.dropped == {"format_mismatch": 1}


def test_drops_are_counted_by_reason(tmp_path):
    good = numbered(3)
    rows = good + [
        "{not json",
        '{"conversations": [{"role": "user", "content": "cut',
        conv(("user", "q"), ("robot", "a")),
        conv(("user", "only")),
        conv(("user", "q"), ("system", "late"), ("assistant", "a")),
        "[1, 2]",
    ]
    src = tmp_path / "in.jsonl"
    write_jsonl(src, rows)
    with open(src, "ab") as f:
        f.write(b'{"conversations": [{"role": "user", "content": "\xff"}]}\n')
    report = process_file(src, tmp_path / "out", max_row_bytes=10_000)
    assert report.total_samples == 10 and report.kept_samples == 3
    assert report.dropped == {"invalid_json": 1, "truncated_json": 1, "unknown_role": 1,
                              "no_complete_turn": 1, "misplaced_system": 1,
                              "not_an_object": 1, "invalid_utf8": 1}


def test_duplicates_after_normalisation_are_removed_before_splitting(tmp_path):
    base = numbered(30)
    variants = [conv(("user", " 问题 0 "), ("assistant", "回答 0，好的。\n")),  # trims to base[0]
                conv(("Human", "问题 1"), ("GPT", "回答 1，好的。")),          # aliases -> base[1]
                base[2], base[2]]
    src = write_jsonl(tmp_path / "in.jsonl", base + variants)
    report = process_file(src, tmp_path / "out", split=SplitSpec(0.5, 0.25, 0.25))
    assert report.duplicates_removed == 4 and report.kept_samples == 30
    seen = []
    for name in processing.SPLIT_FILES:
        seen += (tmp_path / "out" / name).read_text(encoding="utf-8").splitlines()
    assert len(seen) == len(set(seen)) == 30


def test_repairs_are_reported(tmp_path):
    rows = [conv(("assistant", "hi"), ("user", "q"), ("assistant", "a")),
            conv(("user", "q"), ("assistant", " "), ("user", "q2"), ("assistant", "a2"))]
    report = process_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out")
    assert report.repairs == {"leading_assistant_removed": 1, "empty_message_removed": 1,
                              "consecutive_messages_merged": 1}
    assert read_jsonl(tmp_path / "out" / "processed.json")[1] == \
        conv(("user", "q\n\nq2"), ("assistant", "a2"))


def test_bom_crlf_and_json_array_inputs(tmp_path):
    rows = numbered(4)
    crlf = write_jsonl(tmp_path / "crlf.json", rows, newline="\r\n", bom=True)
    process_file(crlf, tmp_path / "a")
    array = tmp_path / "array.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, ensure_ascii=False, indent=2).encode())
    process_file(array, tmp_path / "b")
    expected = original_lines(rows)
    assert (tmp_path / "a" / "processed.json").read_text(encoding="utf-8") == expected
    assert (tmp_path / "b" / "processed.json").read_text(encoding="utf-8") == expected


def test_escapes_round_trip(tmp_path):
    rows = [conv(("user", 'say "hi"\\n\n\tnow'), ("assistant", "ok\u2028😀")),
            conv(("user", "e\u0301"), ("assistant", "x"))]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")  # ASCII-escaped
    process_file(src, tmp_path / "out")
    text = (tmp_path / "out" / "processed.json").read_text(encoding="utf-8")
    assert text == original_lines([rows[0], conv(("user", "\u00e9"), ("assistant", "x"))])


# ------------------------------------------------------------------------------------------
# Output folder ownership


def test_output_dir_created_and_reprocessing_replaces_our_own_files(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(10))
    out = tmp_path / "deep" / "er" / "out"
    process_file(src, out, split=SplitSpec())
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["files"] == ["test.json", "train.json", "val.json"]
    process_file(src, out, split=SplitSpec(seed=1))  # our own files: replaced
    process_file(src, out)  # processed.json added beside them
    assert sorted(json.loads((out / MANIFEST_NAME).read_text())["files"]) == \
        ["processed.json", "test.json", "train.json", "val.json"]


def test_foreign_files_are_not_overwritten_unless_asked(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(10))
    out = tmp_path / "out"
    out.mkdir()
    (out / "val.json").write_text("precious\n")
    with pytest.raises(AlreadyExists) as err:
        process_file(src, out, split=SplitSpec())
    assert "val.json" in str(err.value) and err.value.field_violations[0][0] == "output_dir"
    assert (out / "val.json").read_text() == "precious\n"
    assert not (out / "train.json").exists()
    process_file(src, out, split=SplitSpec(), overwrite=True)
    assert len(read_jsonl(out / "val.json")) == 1


# ------------------------------------------------------------------------------------------
# Atomic writes


def _fail_after(monkeypatch, rows_ok: int):
    real = processing._row_reader

    def row_reader(*args):
        read = real(*args)
        calls = {"n": 0}

        def failing(i):
            calls["n"] += 1
            if calls["n"] > rows_ok:
                raise OSError(28, "No space left on device")
            return read(i)

        return failing

    monkeypatch.setattr(processing, "_row_reader", row_reader)


def test_failure_mid_write_leaves_no_output_file(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(100))
    out = tmp_path / "out"
    _fail_after(monkeypatch, 85)  # train.json (80 rows) done, val.json half written
    with pytest.raises(OSError):
        process_file(src, out, split=SplitSpec())
    assert not out.exists()  # created for this run, removed again since nothing was written


def test_failure_mid_write_keeps_the_previous_outputs(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(100))
    out = tmp_path / "out"
    process_file(src, out, split=SplitSpec(seed=1))
    before = {n: (out / n).read_bytes() for n in processing.SPLIT_FILES}
    _fail_after(monkeypatch, 95)
    with pytest.raises(OSError):
        process_file(src, out, split=SplitSpec(seed=2))
    assert {n: (out / n).read_bytes() for n in processing.SPLIT_FILES} == before
    assert leftovers(out) == []


def test_cancellation_while_reading_and_while_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(processing, "_CHECK_CANCEL_EVERY", 8)
    src = write_jsonl(tmp_path / "in.jsonl", numbered(100))
    with pytest.raises(Cancelled):
        process_file(src, tmp_path / "a", should_stop=lambda: True)
    assert not (tmp_path / "a").exists()
    calls = {"n": 0}

    def stop_late():  # the input is one block: read it, then cancel while writing
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled):
        process_file(src, tmp_path / "b", split=SplitSpec(), should_stop=stop_late)
    assert not (tmp_path / "b").exists()


def test_output_permissions_follow_the_umask(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(3))
    old = os.umask(0o022)
    try:
        process_file(src, tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "processed.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------
# Several worker processes give the same files as one


def test_parallel_workers_write_the_same_files(tmp_path, monkeypatch):
    from services.common.dataset import validate as validation

    rows = numbered(3000)
    rows += rows[:200]  # duplicates across ranges
    rows.insert(1500, "{broken")
    rows.insert(2000, conv(("Human", " 你好 "), ("GPT", "好")))
    src = write_jsonl(tmp_path / "in.jsonl", rows, newline="\r\n")
    single = process_file(src, tmp_path / "one", split=SplitSpec(seed=3), workers=1)
    monkeypatch.setattr(dataset_parallel, "PARALLEL_MIN_BYTES", 30_000)
    assert len(validation.plan_ranges(src, src.stat().st_size, 3)) == 3
    parallel = process_file(src, tmp_path / "three", split=SplitSpec(seed=3), workers=3)
    for name in processing.SPLIT_FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    for field_ in ("total_samples", "kept_samples", "train_samples", "val_samples",
                   "test_samples", "dropped", "duplicates_removed", "repairs", "detected_format"):
        assert getattr(single, field_) == getattr(parallel, field_), field_
    assert single.duplicates_removed == 200 and single.dropped == {"invalid_json": 1}
    assert leftovers(tmp_path / "three") == []


def test_parallel_mixed_formats_name_global_lines(tmp_path, monkeypatch):
    from services.common.dataset import validate as validation

    rows = numbered(2000) + [{"instruction": "i", "output": "o"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    monkeypatch.setattr(dataset_parallel, "PARALLEL_MIN_BYTES", 20_000)
    with pytest.raises(InvalidArgument, match="line 1 is conversations, line 2001 is alpaca"):
        process_file(src, tmp_path / "out", workers=3)
    assert not (tmp_path / "out").exists()


def test_output_dir_under_a_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", numbered(3))
    with pytest.raises(InvalidArgument) as err:
        process_file(src, src / "sub")
    assert err.value.field_violations[0][0] == "output_dir"
