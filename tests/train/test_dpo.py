"""Strategy `dpo` over real gRPC with real worker processes on the tiny model: pre-flight refuses
what TRL's DPOTrainer cannot train (each error naming its field, nothing stored); a LoRA DPO run
writes an adapter folder and reports DPO's reward metrics in the status and the watch stream; a
full DPO run writes a full model folder; a resumed LoRA DPO run ends where an uninterrupted one
does."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from services.train.preflight import DPO_LOSSES
from tests.train.conftest import get, rpc_error, start, wait_for, wait_terminal, watch
from tests.train.test_api import assert_nothing_stored, failure, fields
from wintrain.train.v1 import train_pb2

PAIRS = "datasets/preference_pairs.jsonl"
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
# A short LoRA DPO run: 2 pairs a step, short sequences, one thread.
SMALL = dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=5e-3, warmup_steps=0,
             logging_steps=1, max_length=96, max_prompt_length=48, weight_decay=0.0)
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0)


def dpo(stub, **kwargs):
    return start(stub, strategy=train_pb2.STRATEGY_DPO, **{"dataset": PAIRS, **kwargs})


# -- pre-flight ---------------------------------------------------------------------------------

def test_dpo_needs_preference_data_and_names_the_field(stub, datasets_dir):
    f = failure(dpo, stub, dataset="datasets/qa_facts.jsonl", lora=LORA)
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"dataset_path"}
    assert "preference" in f.message
    f = failure(dpo, stub, eval_dataset="datasets/qa_facts.jsonl", lora=LORA)
    assert fields(f) == {"eval_dataset_path"}
    # and the other way round: SFT strategies refuse a preference file
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, dataset=PAIRS)
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"dataset_path"}
    assert_nothing_stored(stub)


def test_dpo_numbers_are_checked_before_anything_is_queued(stub, datasets_dir):
    f = failure(dpo, stub, beta=0.0, loss_type="sigmoidal", max_length=64, max_prompt_length=64)
    assert f.code == "INVALID_ARGUMENT"
    assert fields(f) == {"config.beta", "config.loss_type", "config.max_prompt_length"}
    for beta in (-0.1, float("nan"), float("inf")):
        assert fields(failure(dpo, stub, beta=beta)) == {"config.beta"}
    assert fields(failure(dpo, stub, max_length=64, max_prompt_length=100)) == {"config.max_prompt_length"}
    for rpo_alpha in (-0.5, float("nan"), float("inf")):
        assert fields(failure(dpo, stub, rpo_alpha=rpo_alpha)) == {"config.rpo_alpha"}
    assert_nothing_stored(stub)


def test_settings_of_the_other_objective_are_refused_not_ignored(stub, datasets_dir):
    # DPO's settings on an SFT task (the interceptor fills the proto defaults, so only a value
    # other than the default is the client's)
    for strategy, lora in ((train_pb2.STRATEGY_TRL, None), (train_pb2.STRATEGY_LORA, LORA)):
        f = failure(start, stub, strategy=strategy, lora=lora, beta=0.5, loss_type="ipo", max_prompt_length=64,
                    rpo_alpha=1.0)
        assert f.code == "INVALID_ARGUMENT"
        assert fields(f) == {"config.beta", "config.loss_type", "config.max_prompt_length", "config.rpo_alpha"}
        assert "applies to strategy dpo only" in f.message
    # ...and group_by_length on a DPO task (its pairs have no input_ids to group by)
    f = failure(dpo, stub, lora=LORA, group_by_length=True)
    assert fields(f) == {"config.group_by_length"} and "strategies trl and lora only" in f.message
    assert_nothing_stored(stub)


def test_settings_of_the_other_objective_at_their_defaults_pass_preflight():
    from services.common.proto_defaults import field_default
    from services.train.preflight import DPO_ONLY, SFT_ONLY, check_objective_settings
    from services.train.settings import TrainingSettings

    d = TrainingSettings.defaults()
    fds = train_pb2.TrainingConfig.DESCRIPTOR.fields_by_name
    assert all(getattr(d, n) == field_default(fds[n]) for n in DPO_ONLY + SFT_ONLY)
    assert check_objective_settings("trl", d) == check_objective_settings("dpo", d) == []
    assert check_objective_settings("dpo", dataclasses.replace(d, beta=0.5)) == []


def test_a_preference_file_with_bad_rows_is_refused_with_line_numbers(stub, datasets_dir):
    good = (datasets_dir / "preference_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    bad = list(good[:10])
    row = json.loads(bad[2])
    row["rejected"] = row["chosen"]  # identical completions
    bad[2] = json.dumps(row, ensure_ascii=False)
    row = json.loads(bad[6])
    del row["chosen"]
    bad[6] = json.dumps(row, ensure_ascii=False)
    (datasets_dir / "bad_pairs.jsonl").write_text("\n".join(bad) + "\n", encoding="utf-8")
    f = failure(dpo, stub, dataset="datasets/bad_pairs.jsonl")
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"dataset_path"}
    assert "line 3" in f.message and "line 7" in f.message, f.message
    assert_nothing_stored(stub)


def test_rpo_alpha_adds_trls_sft_loss_with_its_weight(tmp_path):
    from services.train.recipe import RunSpec, build_dpo_config
    from services.train.settings import TrainingSettings

    def dpo_config(**changes):
        settings = dataclasses.replace(TrainingSettings.defaults(), **changes)
        spec = RunSpec(task_id="t", attempt=1, strategy="dpo", settings=settings, dataset=tmp_path / "d",
                       output_dir=tmp_path / "out", model=tmp_path / "m", run_dir=tmp_path / "run")
        return build_dpo_config(spec, "cpu")

    plain = dpo_config()
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights == [1.0]
    rpo = dpo_config(loss_type="ipo", rpo_alpha=0.5)
    assert rpo.loss_type == ["ipo", "sft"] and rpo.loss_weights == [1.0, 0.5]


def test_known_dpo_losses_are_those_of_the_installed_trl():
    from trl import DPOConfig

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    for name in DPO_LOSSES:
        assert f"'{name}'" in help_text, name
        DPOConfig(output_dir="/tmp/unused", loss_type=name, use_cpu=True, report_to="none")


# -- training -----------------------------------------------------------------------------------

def _metrics_of(events) -> list[dict[str, float]]:
    return [dict(e.metrics) for e in events if e.kind == train_pb2.EVENT_KIND_PROGRESS]


@pytest.mark.slow
def test_lora_dpo_trains_an_adapter_and_reports_rewards(stub, datasets_dir, workspace, tiny_model_dir):
    resp = dpo(stub, output="out/dpo-lora", lora=LORA, max_steps=6, save_steps=0, seed=3, **SMALL)
    events = watch(stub, resp.task_id)
    task = get(stub, resp.task_id)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message
    assert task.strategy == train_pb2.STRATEGY_DPO and task.config.beta == pytest.approx(0.1)
    assert task.config.loss_type == "sigmoid"
    for name in REWARDS:  # the status metrics and every logged step of the watch stream carry them
        assert name in task.metrics and math.isfinite(task.metrics[name]), name
    progress = _metrics_of(events)
    assert len(progress) == 6
    assert all(set(REWARDS) <= set(m) for m in progress)
    assert all(0.0 <= m["rewards/accuracies"] <= 1.0 for m in progress)
    for m in progress:
        assert m["rewards/margins"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"], abs=1e-5)
    out = workspace / "out" / "dpo-lora"
    adapter = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (out / "config.json").exists() or (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_model.safetensors").is_file() and not (out / "training_args.bin").exists()
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("rewards/margins" in e for e in log if e.get("kind") == "train")


@pytest.mark.slow
def test_full_dpo_trains_every_weight_into_a_model_folder(stub, datasets_dir, workspace):
    resp = dpo(stub, output="out/dpo-full", max_steps=2, save_steps=0, **{**SMALL, "learning_rate": 1e-4})
    task = wait_terminal(stub, resp.task_id)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message
    out = workspace / "out" / "dpo-full"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert "rewards/accuracies" in task.metrics

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # a plain Hugging Face loader reads it


@pytest.mark.slow
def test_resumed_lora_dpo_matches_an_uninterrupted_run(stub, datasets_dir, workspace):
    run = dict(lora={**LORA, "lora_dropout": 0.1}, max_steps=8, save_steps=2, seed=11, **SMALL)
    whole = dpo(stub, output="out/dpo-whole", **run)
    cut = dpo(stub, output="out/dpo-cut", **run)
    assert wait_terminal(stub, whole.task_id).status == train_pb2.TASK_STATUS_COMPLETED
    for event in stub.WatchTraining(train_pb2.WatchTrainingRequest(task_id=cut.task_id), timeout=300):
        if event.kind == train_pb2.EVENT_KIND_CHECKPOINT:  # the first one: cancel (it checkpoints again)
            stub.CancelTraining(train_pb2.CancelTrainingRequest(task_id=cut.task_id), timeout=30)
            break
    stopped = wait_terminal(stub, cut.task_id)
    assert stopped.status == train_pb2.TASK_STATUS_CANCELLED, stopped.message
    assert 2 <= stopped.current_step < 8
    stub.ResumeTraining(train_pb2.ResumeTrainingRequest(task_id=cut.task_id), timeout=30)
    resumed = wait_terminal(stub, cut.task_id)
    assert resumed.status == train_pb2.TASK_STATUS_COMPLETED, resumed.error_message

    def step_losses(task_id):
        return {e.current_step: (e.loss, e.metrics["rewards/margins"]) for e in watch(stub, task_id, replay=True)
                if e.kind == train_pb2.EVENT_KIND_PROGRESS and "rewards/margins" in e.metrics}

    straight, resumed_run = step_losses(whole.task_id), step_losses(cut.task_id)
    assert sorted(straight) == list(range(1, 9)) and set(resumed_run) >= set(range(stopped.current_step + 1, 9))
    for step in range(stopped.current_step + 1, 9):  # the steps trained after the resume
        assert resumed_run[step][0] == pytest.approx(straight[step][0], abs=1e-4), step
        assert resumed_run[step][1] == pytest.approx(straight[step][1], abs=1e-4), step


def test_dpo_status_errors_are_never_internal(stub, datasets_dir):
    err = rpc_error(dpo, stub, loss_type="")
    assert err.code().name == "INVALID_ARGUMENT"


def test_the_cli_shows_dpo_rewards_beside_the_loss():
    from cli.train import STRATEGIES, dpo_numbers

    assert STRATEGIES["dpo"] == train_pb2.STRATEGY_DPO
    line = dpo_numbers({"rewards/accuracies": 0.75, "rewards/margins": 0.125, "rewards/chosen": 0.05,
                        "rewards/rejected": -0.075})
    assert line.startswith("  reward acc 0.75 margin 0.125") and "chosen 0.05" in line and "rejected -0.075" in line
    assert dpo_numbers({"eval_loss": 1.0}) == ""  # an SFT run shows none
