"""`wintrain` against the five real services: readable reports, `--json`, exit codes, error
lines, and `train start --follow` ending with the task's outcome."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from cli.client import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK
from tests.cli.conftest import WINTRAIN, process_env, run_script

SMALL_TRAINING = ["--set", "max_steps=3", "--set", "logging_steps=1", "--set", "per_device_train_batch_size=2",
                  "--set", "gradient_accumulation_steps=1", "--set", "max_length=64", "--set", "warmup_steps=0",
                  "--set", "lora_config.r=4", "--set", "lora_config.target_modules=q_proj,v_proj"]


def _bad_dataset(stack) -> str:
    rows = [
        {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"conversations": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]},
    ]
    path = stack.workspace / "datasets" / "bad_roles.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return "datasets/bad_roles.jsonl"


def test_status_shows_every_service_serving_and_no_gateway(wintrain):
    run = wintrain("status", "--json")
    body = run.json()
    assert {name: s["status"] for name, s in body["services"].items()} == {
        "data": "SERVING", "train": "SERVING", "inference": "SERVING", "eval": "SERVING", "export": "SERVING"}
    assert body["gateway"]["status"] == "UNREACHABLE"  # this stack has no gateway
    assert run.code == EXIT_ERROR and body["healthy"] is False


def test_data_validate_reports_counts_and_first_errors_with_line_numbers(stack, wintrain):
    ok = wintrain("data", "validate", "datasets/bilingual_chat.jsonl", "--json")
    assert ok.code == EXIT_OK
    body = ok.json()
    assert body["is_valid"] is True and body["total_samples"] >= 300 and body["invalid_samples"] == 0

    bad_path = _bad_dataset(stack)
    bad = wintrain("data", "validate", bad_path)
    assert bad.code == EXIT_ERROR
    assert "not valid" in bad.out and "rows 3" in bad.out and "invalid 1" in bad.out
    # the problem table names line 3 and the role field
    problem_rows = [line for line in bad.out.splitlines() if "role" in line and "│ 3 " in line]
    assert problem_rows, bad.out
    as_json = wintrain("--json", "data", "validate", bad_path)
    assert as_json.code == EXIT_ERROR
    issues = as_json.json()["issues"]
    assert issues[0]["line"] == 3 and "role" in issues[0]["field"]


def test_data_errors_are_one_line_with_the_code(wintrain):
    missing = wintrain("data", "validate", "datasets/nope.jsonl")
    assert missing.code == EXIT_ERROR
    lines = missing.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wintrain: error: NOT_FOUND")
    outside = wintrain("data", "validate", "/etc/passwd", "--json")
    assert outside.code == EXIT_ERROR
    assert outside.json()["error"]["code"] == "PERMISSION_DENIED"


def test_data_process_splits(stack, wintrain):
    run = wintrain("data", "process", "datasets/bilingual_chat.jsonl", "--out", "data/split", "--split",
                   "0.8/0.1/0.1", "--json")
    assert run.code == EXIT_OK, run.err
    body = run.json()
    assert body["train_samples"] + body["val_samples"] + body["test_samples"] == body["kept_samples"]
    assert body["train_samples"] > body["val_samples"] > 0
    for name in ("train.json", "val.json", "test.json"):
        assert (stack.workspace / "data" / "split" / name).is_file()
    human = wintrain("data", "process", "datasets/train_sample.jsonl", "--out", "data/single")
    assert human.code == EXIT_OK and "processed" in human.out and "processed.json" in human.out


@pytest.mark.slow
def test_train_start_follow_exits_with_the_outcome(stack, wintrain):
    # a real process: the console script, its progress lines and its exit code
    run = run_script(stack, "train", "start", "--strategy", "lora", "--data", "datasets/bilingual_chat.jsonl",
                     "--out", "out/follow", *SMALL_TRAINING, "--follow")
    assert run.code == EXIT_OK, run.out + run.err
    assert "step 3/3" in run.out and "completed" in run.out
    task_id = run.out.split("task ", 1)[1].split()[0]
    assert (stack.workspace / "out" / "follow").is_dir()

    listed = wintrain("train", "list", "--json")
    assert listed.code == EXIT_OK
    assert task_id in [t["task_id"] for t in listed.json()["tasks"]]
    status = wintrain("train", "status", task_id)
    assert status.code == EXIT_OK and "completed" in status.out and "3/3" in status.out
    status_json = wintrain("train", "status", task_id, "--json").json()
    assert status_json["status"] == "completed" and status_json["current_step"] == 3

    # watching an ended task returns at once with its outcome
    watched = wintrain("train", "watch", task_id, "--json")
    assert watched.code == EXIT_OK
    assert watched.json_lines()[-1]["exit_code"] == EXIT_OK

    cancel = wintrain("train", "cancel", task_id)
    assert cancel.code == EXIT_ERROR and "FAILED_PRECONDITION" in cancel.err


def test_train_bad_input_is_one_line_naming_the_field(wintrain):
    run = wintrain("train", "start", "--data", "datasets/bilingual_chat.jsonl", "--out", "out/bad",
                   "--set", "learning_rate=-1")
    assert run.code == EXIT_ERROR
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "INVALID_ARGUMENT" in lines[0] and "config.learning_rate" in lines[0]
    as_json = wintrain("train", "start", "--data", "datasets/bilingual_chat.jsonl", "--out", "out/bad",
                       "--set", "learning_rate=-1", "--json")
    fields = [d["field"] for d in as_json.json()["error"]["details"]]
    assert "config.learning_rate" in fields
    unknown = wintrain("train", "status", "no-such-task")
    assert unknown.code == EXIT_ERROR and "NOT_FOUND" in unknown.err


@pytest.mark.slow
def test_cancel_then_watch_exits_130_and_resume_requeues(stack, wintrain):
    started = wintrain("train", "start", "--data", "datasets/bilingual_chat.jsonl", "--out", "out/cancel",
                       "--set", "max_steps=400", "--set", "logging_steps=1", "--set", "save_steps=1",
                       "--set", "max_length=64", "--set", "gradient_accumulation_steps=1", "--json")
    task_id = started.json()["task_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for a first step (so there is a checkpoint to resume)
        task = wintrain("train", "status", task_id, "--json").json()
        if task["current_step"] >= 1:
            break
        time.sleep(0.5)
    cancel = wintrain("train", "cancel", task_id)
    assert cancel.code == EXIT_OK
    # --json: one event per line (proto JSON), then the outcome with its exit code
    watched = wintrain("train", "watch", task_id, "--json")
    assert watched.code == EXIT_CANCELLED
    lines = watched.json_lines()
    assert lines[0]["task_id"] == task_id and lines[0]["kind"] in ("snapshot", "status", "progress", "eval", "checkpoint")
    assert lines[-1]["exit_code"] == EXIT_CANCELLED and lines[-1]["task"]["status"] == "cancelled"
    human = wintrain("train", "watch", task_id)
    assert human.code == EXIT_CANCELLED and f"task {task_id} cancelled" in human.out

    resumed = wintrain("train", "resume", task_id, "--json")
    assert resumed.code == EXIT_OK, resumed.err
    assert resumed.json()["status"] in ("pending", "running")
    assert wintrain("train", "cancel", task_id).code == EXIT_OK
    assert wintrain("train", "watch", task_id).code == EXIT_CANCELLED


def test_chat_one_message(stack, wintrain):
    run = wintrain("chat", "--model", "models/tiny-chat", "--message", "你好", "--max-tokens", "8", "--seed", "1",
                   "--json")
    assert run.code == EXIT_OK, run.err
    body = run.json()
    assert body["content"] and body["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 8
    assert body["model"] == str(stack.model), "the path that answered, as gRPC Chat says"
    default = wintrain("chat", "--message", "hi", "--max-tokens", "2", "--json").json()
    assert default["model"] == str(stack.model)
    human = wintrain("chat", "--message", "hello", "--max-tokens", "4")
    assert human.code == EXIT_OK and human.out.strip()
    bad = wintrain("chat", "--model", "models/missing", "--message", "hi")
    assert bad.code == EXIT_ERROR and "NOT_FOUND" in bad.err and "model_path" in bad.err


def test_chat_keeps_the_conversation_over_stdin(stack):
    run = run_script(stack, "chat", "--max-tokens", "4", "--seed", "3", "--json", stdin="hello\nand again\n/exit\n",
                     timeout=120)
    assert run.code == EXIT_OK, run.err
    turns = [json.loads(line) for line in run.out.splitlines() if line.strip()]
    assert len(turns) == 2
    # the second turn's prompt holds the whole conversation, so it is longer than the first's
    assert turns[1]["usage"]["prompt_tokens"] > turns[0]["usage"]["prompt_tokens"] + turns[0]["usage"]["completion_tokens"]


def test_chat_ctrl_c_cancels_the_answer_and_a_second_quits(stack):
    proc = subprocess.Popen([str(WINTRAIN), "chat", "--max-tokens", "2000", "--temperature", "1.0"],
                            env=process_env(stack), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        proc.stdin.write("tell me a long story\n")
        proc.stdin.flush()
        first = proc.stdout.read(1)  # the answer has begun streaming
        assert first
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "the first Ctrl-C must only cancel the answer"
        proc.send_signal(signal.SIGINT)  # now at the prompt: quits
        code = proc.wait(30)
        err = proc.stderr.read()
        assert code == EXIT_OK, err
        assert "answer cancelled" in err
        assert time.monotonic() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_eval_reports_metrics(wintrain):
    run = wintrain("eval", "--model", "models/tiny-chat", "--data", "datasets/train_sample.jsonl",
                   "--metrics", "loss,accuracy", "--json")
    assert run.code == EXIT_OK, run.err
    body = run.json()
    assert body["metrics"]["loss"] > 0 and 0 <= body["metrics"]["accuracy"] <= 1
    assert body["total_samples"] == 5
    human = wintrain("eval", "--model", "models/tiny-chat", "--data", "datasets/train_sample.jsonl",
                     "--metrics", "perplexity")
    assert human.code == EXIT_OK and "perplexity" in human.out and "5 samples" in human.out
    bad = wintrain("eval", "--model", "models/tiny-chat", "--data", "datasets/train_sample.jsonl",
                   "--metrics", "loss,bleurgh")
    assert bad.code == EXIT_ERROR and "INVALID_ARGUMENT" in bad.err and "metrics" in bad.err


def test_eval_preference_metrics(wintrain):
    run = wintrain("eval", "--model", "models/tiny-chat", "--data", "datasets/preference_pairs.jsonl",
                   "--metrics", "preference_accuracy,reward_margin", "--max-samples", "8",
                   "--reference", "models/tiny-chat", "--beta", "0.2", "--json")
    assert run.code == EXIT_OK, run.err
    body = run.json()
    assert body["total_samples"] == 8 and 0 <= body["metrics"]["preference_accuracy"] <= 1
    assert abs(body["metrics"]["reward_margin"]) < 1e-6  # the model against itself
    bad = wintrain("eval", "--model", "models/tiny-chat", "--data", "datasets/preference_pairs.jsonl",
                   "--metrics", "reward_margin", "--beta", "0")
    assert bad.code == EXIT_ERROR and "INVALID_ARGUMENT" in bad.err and "beta" in bad.err
    sft = wintrain("eval", "--model", "models/tiny-chat", "--data", "datasets/train_sample.jsonl",
                   "--metrics", "preference_accuracy")
    assert sft.code == EXIT_ERROR and "INVALID_ARGUMENT" in sft.err and "metrics" in sft.err


@pytest.mark.slow
def test_export_onnx_reports_parity(stack, wintrain):
    run = wintrain("export", "--model", "models/tiny-chat", "--out", "exports/tiny", "--json")
    assert run.code == EXIT_OK, run.err
    body = run.json()
    assert body["success"] is True
    assert body["parity"]["tokens_match"] is True
    assert body["parity"]["max_abs_diff"] <= body["parity"]["tolerance"]
    assert (stack.workspace / "exports" / "tiny").is_dir()
    again = wintrain("export", "--model", "models/tiny-chat", "--out", "exports/tiny")
    assert again.code == EXIT_ERROR and again.err.startswith("wintrain: error: ")
