"""What the bench scripts share. Imported as `from benchlib import ...` (a bench script's own folder
is first on sys.path when it runs as `.venv/bin/python bench/x.py`, as for medium_model).

Standard library only at import time: the bare side of a training bench imports this module in a
fresh process whose spawn-to-first-step latency is measured, so anything heavy is imported where
it is used.

- `stop_processes`: end the child processes a bench started.
- Training benches (bench/train_bench.py, bench/dpo_bench.py), bare TRL script against the same run
  as a Win-Train job: the common argument parser; the bare side (`run_bare` spawns
  `python <script> --bare <spec>`, whose `bare_main` uses `read_jsonl`, `load_model`,
  `trainer_kwargs`, `FirstStepTimer` and `emit`); the job side (`train_service`, a real
  TrainService in process with a workspace holding the tiny model and the dataset; `run_job`,
  one job through it, and `stamp` for its timestamps); `print_header` for the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

REPO = Path(__file__).resolve().parents[1]


def stop_processes(procs: list[subprocess.Popen], timeout: float) -> None:
    """Terminate every process, then wait up to `timeout` s for each and kill the ones still there."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- training benches: arguments ------------------------------------------------------------------

def training_parser(doc: str, *, steps: int, steps_help: str | None, rounds: int,
                    rounds_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of each training process")
    parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    return parser


# -- training benches: the bare side --------------------------------------------------------------

# The settings both trainers' configs take as they are; the rest of `spec["settings"]` is the
# job's alone (save_steps, DPO's max_prompt_length) or named by the script (`trainer_kwargs`).
TRAINER_SETTINGS = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "max_steps",
                    "warmup_steps", "logging_steps")
TRAINER_SETTINGS_AFTER = ("max_length", "seed", "lr_scheduler_type", "weight_decay")


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_model(path: str) -> tuple[Any, Any]:
    """(tokenizer, model) of the model at `path`, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return tokenizer, model


def trainer_kwargs(spec: dict, *extra: str) -> dict:
    """The TRL config arguments of a bare run: the shared settings plus the `extra` ones named, no
    checkpoints, CPU, no reporting."""
    s = spec["settings"]
    return dict(
        output_dir=spec["out"], **{k: s[k] for k in TRAINER_SETTINGS}, save_strategy="no",
        **{k: s[k] for k in TRAINER_SETTINGS_AFTER + extra}, gradient_checkpointing=False, bf16=False,
        use_cpu=True, dataloader_pin_memory=False, report_to="none", disable_tqdm=True,
    )


def FirstStepTimer(spawned: float):  # noqa: N802 - makes a TrainerCallback
    """A TrainerCallback whose `seconds` is the time from `spawned` to the end of the first step."""
    from transformers import TrainerCallback

    class _FirstStep(TrainerCallback):
        seconds: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.seconds is None:
                self.seconds = time.time() - spawned

    return _FirstStep()


def emit(figures: dict) -> None:
    """The bare side's one result line, read back by `run_bare`."""
    print("BENCH " + json.dumps(figures), flush=True)


def run_bare(script: str, spec: dict, threads: int, work: Path) -> dict:
    """Run `python <script> --bare <spec>` in a fresh process (OMP threads `threads`) and return
    what its `emit` printed. The spec gets the run's output folder and the spawn time."""
    spec = {**spec, "out": str(work / f"bare-{time.time_ns()}"), "spawned": time.time()}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, script, "--bare", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"bare run failed:\n{proc.stderr[-3000:]}")


# -- training benches: the Win-Train side ---------------------------------------------------------

class TrainService(NamedTuple):
    stub: Any  # a TrainServiceStub
    model: Path  # the tiny model
    dataset: Path  # the dataset in the service's workspace
    work: Path  # scratch folder, removed afterwards


@contextmanager
def train_service(prefix: str, dataset: str, threads: int) -> Iterator[TrainService]:
    """A real TrainService in this process, its workspace holding the bundled `dataset`, on a new
    tiny model; everything lives in a temporary folder named `prefix…`, removed on the way out."""
    import grpc

    import services  # noqa: F401
    from services.train.server import register
    from tests.support import InProcessServer, make_config
    from tools.tiny_model import DATASETS_DIR, build_tiny_model
    from wintrain.train.v1 import train_pb2_grpc

    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        model = build_tiny_model(work / "tiny-chat")
        ws = work / "ws"
        (ws / "datasets").mkdir(parents=True)
        shutil.copy(DATASETS_DIR / dataset, ws / "datasets" / dataset)
        config = make_config(ws, model, **{"train.worker_threads": threads, "train.watch_poll_seconds": 0.05})
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with InProcessServer(config, "train", register) as server:
            with grpc.insecure_channel(server.address) as channel:
                yield TrainService(train_pb2_grpc.TrainServiceStub(channel), model, ws / "datasets" / dataset, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Job(NamedTuple):
    task: Any  # the finished TrainingTask
    started: float  # time.time() just before StartTraining was called
    accepted: float  # time.time() when StartTraining returned


def run_job(stub, strategy: int, dataset: str, config) -> Job:
    """Train `datasets/<dataset>` with `strategy` and `config` as one job, waiting for the end; a job
    that does not complete raises."""
    from wintrain.train.v1 import train_pb2

    started = time.time()
    resp = stub.StartTraining(train_pb2.StartTrainingRequest(
        strategy=strategy, dataset_path=f"datasets/{dataset}",
        output_dir=f"out/job-{time.time_ns()}", config=config), timeout=120)
    accepted = time.time()
    for _ in stub.WatchTraining(train_pb2.WatchTrainingRequest(task_id=resp.task_id), timeout=3600):
        pass
    task = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=resp.task_id), timeout=30)
    if task.status != train_pb2.TASK_STATUS_COMPLETED:
        raise RuntimeError(f"job failed: {task.error_message}")
    return Job(task, started, accepted)


def stamp(iso: str) -> float:
    """A task timestamp (UTC, `2026-01-02T03:04:05.678Z`) as seconds since the epoch."""
    from services.common.timestamps import parse_iso

    return parse_iso(iso)


def print_header(title: str, args: argparse.Namespace, width: int) -> None:
    print(f"\n{title}, batch {args.batch}, {args.steps} steps, "
          f"{args.threads} thread(s) per process, median of {args.rounds}")
    print(f"{'':{width}}{'bare TRL':>12}{'Win-Train job':>16}{'ratio':>8}")
