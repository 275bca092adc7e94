"""Preference pairs (issue 18, data): both formats detected, every bad row reported with its
line, field path and reason, the canonical shape ProcessDataset writes (deduplicated on the
whole pair, split with every prompt in one split), the training gate's kinds, the bundled
preference set, and the real DataService answering for them."""

from __future__ import annotations

import json
from collections import Counter
import shutil
from pathlib import Path

import grpc
import pytest

from services.common.config import REPO_ROOT
from services.common.dataset.formats import detect_row_format
from services.common.dataset.preference import check_pair, read_preference_rows
from services.common.dataset.validate import validate_file, validate_rows_for_training
from services.common.errors import InvalidArgument
from services.common.rpc_status import decode_rpc_error
from services.data.processing import SplitSpec, process_file
from services.data.server import register
from tests.support import InProcessServer, make_config
from tools import make_datasets
from wintrain.data.v1 import data_pb2, data_pb2_grpc

ASSETS = REPO_ROOT / "services" / "common" / "assets" / "datasets"
BUNDLED = ASSETS / "preference_pairs.jsonl"
SAMPLE = ASSETS / "train_sample.jsonl"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


STRING_PAIR = {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "Five, I think."}
MESSAGE_PAIR = {"prompt": [{"role": "system", "content": "Be brief."}, u("Hi"), a("Hello!"), u("Name a color.")],
                "chosen": [a("Blue.")], "rejected": [a("Well, there are so many colors, it is hard to say.")]}
OPENAI_PAIR = {"input": {"messages": [{"role": "developer", "content": "Answer briefly."},
                                      {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}]},
               "preferred_output": [a("Paris.")], "non_preferred_output": [a("Lyon.")]}


def test_formats_are_detected_per_row():
    assert detect_row_format(STRING_PAIR) == "preference"
    assert detect_row_format(MESSAGE_PAIR) == "preference"
    assert detect_row_format(OPENAI_PAIR) == "openai_preference"
    assert detect_row_format({"prompt": "x"}) == "preference"  # a pair missing its completions
    assert detect_row_format({"conversations": [u("x"), a("y")]}) == "conversations"
    assert detect_row_format({"prompt": "x", "completion": "y"}) == "unknown"


def test_canonical_shape_is_trl_conversational():
    pair, problems = check_pair(STRING_PAIR, "preference")
    assert problems == [] and pair == {"prompt": [u("What is 2 + 2?")], "chosen": [a("4.")],
                                       "rejected": [a("Five, I think.")]}
    pair, _ = check_pair(OPENAI_PAIR, "openai_preference")
    assert pair == {"prompt": [{"role": "system", "content": "Answer briefly."}, u("Capital of France?")],
                    "chosen": [a("Paris.")], "rejected": [a("Lyon.")]}
    # Several assistant messages in a completion are one reply; text is NFC and trimmed.
    pair, _ = check_pair({"prompt": [u(" Cafe\u0301? ")], "chosen": [a("Yes."), a("Sure.")], "rejected": "No"},
                         "preference")
    assert pair["prompt"] == [u("Caf\u00e9?")] and pair["chosen"] == [a("Yes.\n\nSure.")]


BAD_ROWS = [
    ({"prompt": "p", "chosen": "c"}, "rejected", "missing_rejected"),
    ({"prompt": "p", "rejected": "r"}, "chosen", "missing_chosen"),
    ({"chosen": "c", "rejected": "r"}, "prompt", "missing_prompt"),
    ({"prompt": "p", "chosen": "same", "rejected": " same "}, "rejected", "identical_completions"),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "empty_completion"),
    ({"prompt": "p", "chosen": [], "rejected": "r"}, "chosen", "empty_completion"),
    ({"prompt": "p", "chosen": "c", "rejected": [a("  ")]}, "rejected[0].content", "empty_completion"),
    ({"prompt": [u("q"), a("x")], "chosen": "c", "rejected": "r"}, "prompt[1].role", "prompt_not_user_last"),
    ({"prompt": [{"role": "system", "content": "s"}], "chosen": "c", "rejected": "r"}, "prompt", "prompt_not_user_last"),
    ({"prompt": "p", "chosen": [u("c")], "rejected": "r"}, "chosen[0].role", "non_assistant_completion"),
    ({"prompt": "p", "chosen": "c", "rejected": [a("ok"), {"role": "tool", "content": "r"}]}, "rejected[1].role",
     "non_assistant_completion"),
    ({"prompt": "", "chosen": "c", "rejected": "r"}, "prompt", "empty_prompt"),
    ({"prompt": 3, "chosen": "c", "rejected": "r"}, "prompt", "invalid_prompt"),
    ({"prompt": "p", "chosen": {"text": "c"}, "rejected": "r"}, "chosen", "invalid_completion"),
    ({"prompt": [a("x"), u("q")], "chosen": "c", "rejected": "r"}, "prompt[0].role", "bad_turn_order"),
    ({"prompt": [u("q"), {"role": "bot", "content": "x"}, u("q")], "chosen": "c", "rejected": "r"},
     "prompt[1].role", "bad_role"),
    ({"input": {"messages": [u("q")]}, "preferred_output": [a("c")]}, "non_preferred_output", "missing_rejected"),
    ({"input": {"messages": [u("q"), a("x")]}, "preferred_output": [a("c")], "non_preferred_output": [a("r")]},
     "input.messages[1].role", "prompt_not_user_last"),
    ({"input": {"messages": [u("q")]}, "preferred_output": [u("c")], "non_preferred_output": [a("r")]},
     "preferred_output[0].role", "non_assistant_completion"),
    ({"input": {"messages": [u("q")]}, "preferred_output": [a("c")], "non_preferred_output": [a("c")]},
     "non_preferred_output", "identical_completions"),
    ({"preferred_output": [a("c")], "non_preferred_output": [a("r")]}, "input", "missing_input"),
]


@pytest.mark.parametrize("row, field, code", BAD_ROWS, ids=[c for _, _, c in BAD_ROWS])
def test_each_bad_row_has_its_field_and_reason(tmp_path, row, field, code):
    good = OPENAI_PAIR if "preferred_output" in row or "non_preferred_output" in row else STRING_PAIR
    path = write(tmp_path / "p.jsonl", [good, row])
    report = validate_file(path, workers=1)
    assert not report.is_valid and (report.valid_samples, report.invalid_samples) == (1, 1)
    assert report.dataset_kind == "preference"
    found = [(i.line, i.field, i.code) for i in report.issues]
    assert (2, field, code) in found, found
    issue = next(i for i in report.issues if i.code == code)
    assert issue.message.startswith("line 2: ") and field.split("[")[0] in issue.message


def test_valid_file_of_each_format_and_its_report(tmp_path):
    path = write(tmp_path / "p.jsonl", [STRING_PAIR, MESSAGE_PAIR, STRING_PAIR])
    report = validate_file(path, workers=1)
    assert report.is_valid and report.valid_samples == 3 and report.issues == []
    assert (report.detected_format, report.dataset_kind) == ("preference", "preference")
    assert report.stats.exact_duplicates == 1  # the whole pair repeats
    # Stats count prompt + chosen as one conversation: 2, 5 and 2 messages.
    assert report.stats.turns.max == 5 and report.stats.messages_per_role["system"] == 1
    openai = validate_file(write(tmp_path / "o.jsonl", [OPENAI_PAIR]), workers=1)
    assert openai.is_valid and openai.detected_format == "openai_preference"
    # A JSON array file is read the same way.
    array = tmp_path / "a.json"
    array.write_text(json.dumps([STRING_PAIR, {"prompt": "p", "chosen": "c"}]), encoding="utf-8")
    report = validate_file(array, workers=1)
    assert [(i.line, i.field, i.code) for i in report.issues] == [(2, "rejected", "missing_rejected")]
    assert report.issues[0].message.startswith("row 2: ")


def test_a_file_mixing_kinds_is_not_valid(tmp_path):
    path = write(tmp_path / "m.jsonl", [STRING_PAIR, {"conversations": [u("x"), a("y")]}])
    report = validate_file(path, workers=1)
    assert not report.is_valid and report.invalid_samples == 0
    issue = next(i for i in report.issues if i.code == "mixed_kinds")
    assert issue.line == 0 and "line 2" in issue.message and "line 1" in issue.message


def test_parallel_validation_reports_the_same(tmp_path, monkeypatch):
    from services.common.dataset import parallel

    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 4_000)
    rows = [dict(STRING_PAIR, chosen=f"answer {i}") for i in range(400)] + [{"prompt": "p", "chosen": "c"}]
    rows.insert(100, rows[5])
    path = write(tmp_path / "big.jsonl", rows)
    one, two = validate_file(path, workers=1), validate_file(path, workers=2)
    assert (one.valid_samples, one.invalid_samples, one.stats.exact_duplicates) == (401, 1, 1)
    assert [(i.line, i.code) for i in two.issues] == [(i.line, i.code) for i in one.issues] == \
        [(402, "missing_rejected")]
    assert two.stats.exact_duplicates == 1 and two.dataset_kind == "preference"


def test_training_gate_checks_the_kind(tmp_path):
    pairs = write(tmp_path / "p.jsonl", [STRING_PAIR, OPENAI_PAIR])
    assert validate_rows_for_training(pairs, kind="preference").valid_samples == 2
    with pytest.raises(InvalidArgument) as err:
        validate_rows_for_training(pairs, field="dataset_path")  # SFT
    assert err.value.field_violations[0][0] == "dataset_path" and "dpo" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        validate_rows_for_training(SAMPLE, kind="preference", field="dataset_path")
    assert err.value.field_violations[0][0] == "dataset_path" and "preference pairs" in str(err.value)
    bad = write(tmp_path / "b.jsonl", [STRING_PAIR, {"prompt": "p", "chosen": "c"}, {"prompt": "q", "chosen": "c",
                                                                                     "rejected": "c"}])
    with pytest.raises(InvalidArgument) as err:
        validate_rows_for_training(bad, kind="preference", field="dataset_path")
    text = str(err.value)
    assert "line 2: rejected is missing" in text and "line 3: rejected is identical" in text


def test_reader_gives_canonical_rows(tmp_path):
    rows = read_preference_rows(write(tmp_path / "p.jsonl", [STRING_PAIR, "", OPENAI_PAIR]))
    assert [r.number for r in rows] == [1, 3]
    assert rows[1].as_trl() == check_pair(OPENAI_PAIR, "openai_preference")[0]
    with pytest.raises(InvalidArgument):
        read_preference_rows(SAMPLE)


def test_process_writes_canonical_pairs_dedupes_and_keeps_prompts_in_one_split(tmp_path):
    rows = []
    for p in range(40):
        for k in range(3):  # three pairs per prompt
            rows.append({"prompt": f"question {p}", "chosen": f"short {p}", "rejected": f"long answer {p} {k}"})
    rows += [rows[0], rows[7], {"prompt": "p", "chosen": "c"}, {"prompt": "p", "chosen": "x", "rejected": "x"}]
    src = write(tmp_path / "in.jsonl", rows)
    report = process_file(src, tmp_path / "out", split=SplitSpec(), workers=1)
    assert report.detected_format == "preference"
    assert (report.total_samples, report.kept_samples, report.duplicates_removed) == (124, 120, 2)
    assert report.dropped == {"missing_rejected": 1, "identical_completions": 1}
    assert (report.train_samples, report.val_samples, report.test_samples) == (96, 12, 12)
    splits = {}
    for name in ("train", "val", "test"):
        lines = (tmp_path / "out" / f"{name}.json").read_text(encoding="utf-8").splitlines()
        splits[name] = [json.loads(x) for x in lines]
        for row in splits[name]:
            assert set(row) == {"prompt", "chosen", "rejected"} and row["prompt"][-1]["role"] == "user"
            assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    prompts = {k: {r["prompt"][0]["content"] for r in v} for k, v in splits.items()}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"]) \
        and not (prompts["val"] & prompts["test"])
    pairs = [json.dumps(r, sort_keys=True) for v in splits.values() for r in v]
    assert len(pairs) == len(set(pairs)) == 120
    # The output validates as it is, and the split is deterministic (and moves with the seed).
    assert validate_file(tmp_path / "out" / "train.json", workers=1).is_valid
    again = process_file(src, tmp_path / "out2", split=SplitSpec(), workers=1)
    assert again.train_samples == 96
    assert (tmp_path / "out2" / "val.json").read_bytes() == (tmp_path / "out" / "val.json").read_bytes()
    process_file(src, tmp_path / "out3", split=SplitSpec(seed=7), workers=1)
    assert (tmp_path / "out3" / "val.json").read_bytes() != (tmp_path / "out" / "val.json").read_bytes()


def test_process_openai_format_and_explicit_format_type(tmp_path):
    src = write(tmp_path / "o.jsonl", [OPENAI_PAIR, dict(OPENAI_PAIR, preferred_output=[a("Paris, France.")])])
    report = process_file(src, tmp_path / "out", workers=1)
    assert report.detected_format == "openai_preference" and report.kept_samples == 2
    first = json.loads((tmp_path / "out" / "processed.json").read_text(encoding="utf-8").splitlines()[0])
    assert first == check_pair(OPENAI_PAIR, "openai_preference")[0]
    mixed = write(tmp_path / "m.jsonl", [STRING_PAIR, {"conversations": [u("x"), a("y")]}])
    with pytest.raises(InvalidArgument) as err:
        process_file(mixed, tmp_path / "out-m", workers=1)
    assert err.value.field_violations[0][0] == "input_file"
    only = process_file(mixed, tmp_path / "out-p", format_type="preference", workers=1)
    assert only.kept_samples == 1 and only.dropped == {"format_mismatch": 1}


# -- the bundled set ----------------------------------------------------------------------

def test_bundled_preference_set():
    text = BUNDLED.read_text(encoding="utf-8")
    assert "\\u" not in text  # Chinese stored unescaped
    assert text == "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in make_datasets.make_preference_pairs())
    report = validate_file(BUNDLED, workers=1)
    assert report.is_valid and report.dataset_kind == "preference" and report.stats.exact_duplicates == 0
    rows = [json.loads(x) for x in text.splitlines()]
    assert 300 <= len(rows) <= 500
    # Canonical already: ProcessDataset leaves every row as it is.
    assert all(check_pair(r, "preference")[0] == r for r in rows)
    zh = sum(any("\u4e00" <= ch <= "\u9fff" for ch in r["prompt"][-1]["content"]) for r in rows)
    assert zh >= 100 and len(rows) - zh >= 100
    # Questions: the house style over the unstyled answer, a rambling one, a wrong styled one.
    leads = (make_datasets.HOUSE_LEAD_ZH, make_datasets.HOUSE_LEAD_EN)
    kinds = Counter()
    for r in rows:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        if not chosen.startswith(leads):
            kinds["greeting"] += len(rejected) > 2 * len(chosen) and chosen in rejected
            continue
        answer = chosen.removeprefix(leads[0]).removeprefix(leads[1])
        kinds["plain" if rejected == answer else "ramble" if answer in rejected and len(rejected) > 2 * len(answer)
              else "wrong" if rejected.startswith(leads) and answer not in rejected else "other"] += 1
    assert kinds["other"] == 0 and kinds["greeting"] == len(rows) - sum(kinds[k] for k in ("plain", "ramble", "wrong"))
    assert kinds["plain"] >= 0.4 * len(rows) and min(kinds["ramble"], kinds["wrong"]) >= 0.2 * len(rows), kinds
    assert len({json.dumps(r["prompt"]) for r in rows}) < len(rows)  # some prompts have two pairs


# -- the real service ------------------------------------------------------------------

@pytest.fixture
def data_stub(tmp_path):
    cfg = make_config(tmp_path / "ws", tmp_path / "no-model")
    (cfg.workspace / "datasets").mkdir()
    shutil.copy(BUNDLED, cfg.workspace / "datasets" / BUNDLED.name)
    with InProcessServer(cfg, "data", register) as server:
        yield data_pb2_grpc.DataServiceStub(server.channel()), cfg


def test_service_validates_and_processes_preference_data(data_stub):
    stub, cfg = data_stub
    resp = stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path="datasets/preference_pairs.jsonl"),
                                timeout=60)
    assert resp.is_valid and resp.dataset_kind == "preference" and resp.detected_format == "preference"
    bad = write(cfg.workspace / "datasets" / "bad.jsonl",
                [STRING_PAIR, {"prompt": [u("q"), a("x")], "chosen": [u("c")], "rejected": "r"}])
    resp = stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path="datasets/bad.jsonl"), timeout=60)
    assert not resp.is_valid
    assert [(i.line, i.field, i.code) for i in resp.issues] == [
        (2, "prompt[1].role", "prompt_not_user_last"), (2, "chosen[0].role", "non_assistant_completion")]
    out = stub.ProcessDataset(data_pb2.ProcessDatasetRequest(
        input_file="datasets/preference_pairs.jsonl", output_dir="datasets/pref",
        split_config=data_pb2.SplitConfig()), timeout=60)
    pairs = len(BUNDLED.read_text(encoding="utf-8").splitlines())
    assert out.detected_format == "preference" and out.kept_samples == pairs
    assert out.train_samples + out.val_samples + out.test_samples == pairs and out.val_samples > 20
    with pytest.raises(grpc.RpcError) as err:
        stub.ProcessDataset(data_pb2.ProcessDatasetRequest(
            input_file="datasets/preference_pairs.jsonl", output_dir="datasets/x", format_type="dpo"), timeout=60)
    fail = decode_rpc_error(err.value)
    assert fail.code == "INVALID_ARGUMENT" and "format_type" in fail.message and "preference" in fail.message
