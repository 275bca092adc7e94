"""Training throughput: a bare TRL script against the same run as a Win-Train job.

    .venv/bin/python bench/train_bench.py [--steps N] [--batch 8] [--threads 1]

Both sides train the embedded tiny model with TRL's SFTTrainer on the bundled, length-skewed
`bilingual_chat.jsonl` (assistant-only loss, same settings, same seed), each in its own fresh
process: the bare script is `python bench/train_bench.py --bare …` (SFTTrainer and nothing
else); the job goes through a real TrainService (gRPC, job store, worker process, progress
callback). Printed:

- tokens/s of each (non-padding tokens / train_runtime) and the ratio job/bare (goal >= 0.95);
- the job's start-to-first-step latency (StartTraining returned -> first step reported), next
  to the bare script's (process spawn -> first step);
- padding waste (padding tokens / all tokens in the batches) with and without
  `group_by_length`, and tokens/s of both with it. Length grouping only reorders samples, so
  every sequence keeps its own attention mask: it is exact on CPU attention (SDPA/eager),
  unlike packing, which needs an attention implementation that keeps packed sequences apart.

Runs alternate bare/job so that load from other processes on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATASET = "bilingual_chat.jsonl"


def settings(args, group: bool) -> dict:
    return dict(per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, learning_rate=1e-4,
                max_steps=args.steps, warmup_steps=2, logging_steps=5, save_steps=0, max_length=512,
                seed=42, lr_scheduler_type="linear", weight_decay=0.01, group_by_length=group)


# -- the bare side ------------------------------------------------------------------------------

def bare_main(spec: dict) -> None:
    """Plain TRL: load, SFTTrainer, train. Prints one JSON line with the figures."""
    spawned = spec["spawned"]
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(spec["dataset"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list([{"messages": r["conversations"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    s = spec["settings"]
    args = SFTConfig(
        output_dir=spec["out"], per_device_train_batch_size=s["per_device_train_batch_size"],
        gradient_accumulation_steps=s["gradient_accumulation_steps"], learning_rate=s["learning_rate"],
        max_steps=s["max_steps"], warmup_steps=s["warmup_steps"], logging_steps=s["logging_steps"],
        save_strategy="no", max_length=s["max_length"], seed=s["seed"], lr_scheduler_type=s["lr_scheduler_type"],
        weight_decay=s["weight_decay"], group_by_length=s["group_by_length"], assistant_only_loss=True,
        gradient_checkpointing=False, bf16=False, use_cpu=True, dataloader_pin_memory=False,
        report_to="none", disable_tqdm=True,
    )
    counts = {"real": 0, "padded": 0, "first_step": None}

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if counts["first_step"] is None:
                counts["first_step"] = time.time() - spawned

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[FirstStep()])
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        counts["padded"] += int(batch["input_ids"].numel())
        counts["real"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting
    out = trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    print("BENCH " + json.dumps({
        "tokens": tokens[-1], "runtime": out.metrics["train_runtime"],
        "tokens_per_second": tokens[-1] / out.metrics["train_runtime"],
        "first_step_seconds": counts["first_step"],
        "padding_waste": 1 - counts["real"] / max(counts["padded"], 1),
    }), flush=True)


def run_bare(args, model: Path, dataset: Path, group: bool, work: Path) -> dict:
    spec = {"model": str(model), "dataset": str(dataset), "settings": settings(args, group),
            "out": str(work / f"bare-{time.time_ns()}"), "spawned": time.time()}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--bare", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"bare run failed:\n{proc.stderr[-3000:]}")


# -- the Win-Train side -------------------------------------------------------------------------

def run_job(args, stub, group: bool) -> dict:
    from wintrain.train.v1 import train_pb2

    config = train_pb2.TrainingConfig(**settings(args, group))
    started = time.time()
    resp = stub.StartTraining(train_pb2.StartTrainingRequest(
        strategy=train_pb2.STRATEGY_TRL, dataset_path=f"datasets/{DATASET}",
        output_dir=f"out/job-{time.time_ns()}", config=config), timeout=120)
    accepted = time.time()
    for _ in stub.WatchTraining(train_pb2.WatchTrainingRequest(task_id=resp.task_id), timeout=3600):
        pass
    task = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=resp.task_id), timeout=30)
    if task.status != train_pb2.TASK_STATUS_COMPLETED:
        raise RuntimeError(f"job failed: {task.error_message}")
    m = task.metrics

    def stamp(iso: str) -> float:
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()

    return {
        "tokens": m["num_tokens"], "runtime": m["train_runtime"],
        "tokens_per_second": m["num_tokens"] / m["train_runtime"],
        "accept_seconds": accepted - started,
        # StartTraining accepted -> worker spawned -> first optimizer step done.
        "queue_seconds": stamp(task.started_at) - stamp(task.created_at),
        "first_step_seconds": stamp(task.started_at) - stamp(task.created_at) + m["seconds_to_first_step"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=45, help="optimizer steps per run (45 = one epoch at batch 8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of each training process")
    parser.add_argument("--rounds", type=int, default=2, help="bare/job pairs per setting")
    args = parser.parse_args()
    if args.bare:
        bare_main(json.loads(args.bare))
        return 0

    import grpc

    import services  # noqa: F401
    from tools.tiny_model import DATASETS_DIR, build_tiny_model
    from services.train.server import register
    from tests.support import InProcessServer, make_config
    from wintrain.train.v1 import train_pb2_grpc

    work = Path(tempfile.mkdtemp(prefix="wintrain-train-bench-"))
    try:
        model = build_tiny_model(work / "tiny-chat")
        ws = work / "ws"
        (ws / "datasets").mkdir(parents=True)
        shutil.copy(DATASETS_DIR / DATASET, ws / "datasets" / DATASET)
        config = make_config(ws, model, **{"train.worker_threads": args.threads, "train.watch_poll_seconds": 0.05})
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        results: dict[tuple[str, bool], list[dict]] = {}
        with InProcessServer(config, "train", register) as server:
            with grpc.insecure_channel(server.address) as channel:
                stub = train_pb2_grpc.TrainServiceStub(channel)
                for group in (False, True):
                    for _ in range(args.rounds):
                        results.setdefault(("bare", group), []).append(
                            run_bare(args, model, ws / "datasets" / DATASET, group, work))
                        results.setdefault(("job", group), []).append(run_job(args, stub, group))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(side: str, group: bool, key: str) -> float:
        values = [r[key] for r in results[(side, group)] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    print(f"\nTraining bench: tiny model, {DATASET}, batch {args.batch}, {args.steps} steps, "
          f"{args.threads} thread(s) per process, median of {args.rounds}")
    print(f"{'':28}{'bare TRL':>12}{'Win-Train job':>16}{'ratio':>8}")
    for group in (False, True):
        bare, job = med("bare", group, "tokens_per_second"), med("job", group, "tokens_per_second")
        label = "tokens/s" + (" (group_by_length)" if group else "")
        print(f"{label:28}{bare:12.1f}{job:16.1f}{job / bare:8.3f}")
    print(f"{'start to first step (s)':28}{med('bare', False, 'first_step_seconds'):12.2f}"
          f"{med('job', False, 'first_step_seconds'):16.2f}")
    print(f"{'  StartTraining call (s)':28}{'':12}{med('job', False, 'accept_seconds'):16.2f}"
          "   (pre-flight: dataset validation, model checks)")
    print(f"{'  accepted -> worker spawned':28}{'':12}{med('job', False, 'queue_seconds'):16.2f}")
    waste_off, waste_on = med("bare", False, "padding_waste"), med("bare", True, "padding_waste")
    print(f"padding waste: {waste_off:.1%} of batch tokens without group_by_length, {waste_on:.1%} with it")
    speedup = med("job", True, "tokens_per_second") / med("job", False, "tokens_per_second")
    print(f"group_by_length: job tokens/s x{speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
