"""ValidateDataset and ProcessDataset share one duplicate definition: the normalised row,
keyed by a stable content hash and compared on its bytes when hashes collide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.common.dataset import dedupe
from services.common.dataset import parallel as dataset_parallel
from services.common.dataset import validate as validation
from services.data import processing
from services.data.processing import SplitSpec, process_file
from services.common.dataset.validate import validate_file

ROW = {"conversations": [{"role": "user", "content": "Hi there"},
                         {"role": "assistant", "content": "Hello!"}]}
OTHER = {"conversations": [{"role": "user", "content": "Bye"},
                           {"role": "assistant", "content": "See you"}]}


def _three_copies(path):
    line = json.dumps(ROW, ensure_ascii=False)
    path.write_bytes((line + "\r\n" + line + "\n" + line + "   \n").encode())
    return path


def test_crlf_lf_and_trailing_spaces_count_the_same_in_both(tmp_path):
    src = _three_copies(tmp_path / "d.jsonl")
    assert validate_file(src).stats.exact_duplicates == 2
    assert process_file(src, tmp_path / "out").duplicates_removed == 2


def test_rows_equal_after_normalisation_are_duplicates_in_both(tmp_path):
    spaced = {"conversations": [{"role": "user", "content": "  Hi there "},
                                {"role": "assistant", "content": "Hello!\n"}]}
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(ROW) + "\n" + json.dumps(spaced) + "\n" + json.dumps(OTHER) + "\n")
    assert validate_file(src).stats.exact_duplicates == 1
    assert process_file(src, tmp_path / "out").duplicates_removed == 1


def test_content_hash_is_stable_across_processes():
    code = ("from services.common.dataset.dedupe import content_hash; "
            "print(content_hash(b'{\"conversations\": []}'))")
    seen = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        seen.add(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                capture_output=True, text=True).stdout.strip())
    assert seen == {str(dedupe.content_hash(b'{"conversations": []}'))}


def test_a_hash_collision_keeps_distinct_rows(tmp_path, monkeypatch):
    # Every row gets the same hash: only the byte comparison tells them apart.
    monkeypatch.setattr(dedupe, "content_hash", lambda data: 7)
    monkeypatch.setattr(processing, "content_hash", lambda data: 7)
    src = tmp_path / "d.jsonl"
    rows = [ROW, OTHER, ROW, {"conversations": [{"role": "user", "content": "Third"},
                                                 {"role": "assistant", "content": "row"}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validate_file(src).stats.exact_duplicates == 1
    report = process_file(src, tmp_path / "out", split=None)
    assert report.duplicates_removed == 1 and report.kept_samples == 3
    written = (tmp_path / "out" / "processed.json").read_text().splitlines()
    assert sorted(json.loads(x)["conversations"][0]["content"] for x in written) == \
        ["Bye", "Hi there", "Third"]


def test_a_hash_collision_keeps_distinct_rows_across_workers(tmp_path, monkeypatch):
    # Workers are separate processes: patch the hash in them through a sitecustomize.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from services.common.dataset import dedupe\n"
        "dedupe.content_hash = lambda data: 7\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setattr(dedupe, "content_hash", lambda data: 7)
    monkeypatch.setattr(processing, "content_hash", lambda data: 7)
    monkeypatch.setattr(dataset_parallel, "PARALLEL_MIN_BYTES", 4_000)
    rows = [{"conversations": [{"role": "user", "content": f"q{i}"},
                               {"role": "assistant", "content": f"a{i}"}]} for i in range(150)]
    rows += rows[:20]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(validation.plan_ranges(src, src.stat().st_size, 2)) == 2
    assert validate_file(src, workers=2).stats.exact_duplicates == 20
    report = process_file(src, tmp_path / "out", split=SplitSpec(seed=1), workers=2)
    assert report.duplicates_removed == 20 and report.kept_samples == 150


def test_stale_scratch_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"wintrain-process-{dead.pid}-abc"
    live = tmp_path / f"wintrain-process-{os.getpid()}-abc"
    foreign = tmp_path / "wintrain-processing-notes"
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "x").write_text("x")
    assert validation.clean_stale_scratch(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_train_and_eval_read_rows_by_the_rules_pre_flight_applies(tmp_path):
    from services.common.dataset.rules import explain_row
    from services.eval.runner import read_rows
    from services.train.recipe import load_conversations

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(ROW) + "\n" + json.dumps(OTHER) + "\n")
    assert len(load_conversations(good, 1 << 20)) == 2
    rows, skipped = read_rows(good, max_row_bytes=1 << 20, limit=0)
    assert len(rows) == 2 and not skipped

    # A `messages` row: pre-flight refuses it, so training does not quietly accept it.
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps({"messages": ROW["conversations"]}) + "\n")
    assert explain_row({"messages": ROW["conversations"]})
    with pytest.raises(ValueError, match="line 1: .*conversations"):
        load_conversations(messages, 1 << 20)
    rows, skipped = read_rows(messages, max_row_bytes=1 << 20, limit=0)
    assert rows == [] and skipped == {"openai_format": 1}


def test_the_hot_path_accepts_exactly_the_rows_explain_row_accepts():
    import random

    from services.common.dataset.rules import explain_row

    rnd = random.Random(3)
    roles = ["user", "assistant", "system", "User", "gpt", 7, None]
    contents = ["hi", "  ", "", "x y", 3, None, "caf\u00e9", "\ud800"]
    for _ in range(3000):
        conv = [{"role": rnd.choice(roles), "content": rnd.choice(contents)}
                for _ in range(rnd.randint(0, 5))]
        obj = {"conversations": conv} if rnd.random() < 0.95 else {"messages": conv}
        text = json.dumps(obj)
        assert (dedupe.row_key(text.encode(), text, json.loads(text)) is not None) == \
            (explain_row(json.loads(text)) == []), text
