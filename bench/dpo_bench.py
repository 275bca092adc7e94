"""DPO throughput: a bare TRL DPOTrainer script against the same run as a Win-Train job.

    .venv/bin/python bench/dpo_bench.py [--steps 20] [--batch 8] [--threads 1] [--rounds 1]

Both sides train a LoRA adapter on the embedded tiny model with TRL's DPOTrainer on the bundled
`preference_pairs.jsonl` (same settings, same seed; the reference is the base with the adapter
disabled), each in its own fresh process: the bare script is `python bench/dpo_bench.py --bare …`
(DPOTrainer and nothing else); the job goes through a real TrainService (gRPC, pre-flight, job
store, worker process, progress callback, TensorBoard event files). Printed: samples/s of each
(the Trainer's train_samples_per_second) and the ratio job/bare (goal >= 0.95), and the
start-to-first-step latency of each (bare: process spawn -> first step; job: StartTraining
called -> first step). Runs alternate bare/job so that load from other processes on the
machine hits both alike.
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
DATASET = "preference_pairs.jsonl"
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def settings(args) -> dict:
    return dict(per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, learning_rate=5e-4,
                max_steps=args.steps, warmup_steps=2, logging_steps=5, save_steps=0, max_length=256,
                max_prompt_length=128, seed=42, lr_scheduler_type="linear", weight_decay=0.0, beta=0.1)


# -- the bare side ------------------------------------------------------------------------------

def bare_main(spec: dict) -> None:
    """Plain TRL: load, DPOTrainer with a LoRA config, train. Prints one JSON line."""
    spawned = spec["spawned"]
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(spec["dataset"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    s = spec["settings"]
    args = DPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=s["per_device_train_batch_size"],
        gradient_accumulation_steps=s["gradient_accumulation_steps"], learning_rate=s["learning_rate"],
        max_steps=s["max_steps"], warmup_steps=s["warmup_steps"], logging_steps=s["logging_steps"],
        save_strategy="no", max_length=s["max_length"], seed=s["seed"], lr_scheduler_type=s["lr_scheduler_type"],
        weight_decay=s["weight_decay"], beta=s["beta"], gradient_checkpointing=False, bf16=False, use_cpu=True,
        dataloader_pin_memory=False, report_to="none", disable_tqdm=True,
    )
    first = {"step": None}

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if first["step"] is None:
                first["step"] = time.time() - spawned

    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **spec["lora"]), callbacks=[FirstStep()])
    out = trainer.train()
    print("BENCH " + json.dumps({"samples_per_second": out.metrics["train_samples_per_second"],
                                 "first_step_seconds": first["step"]}), flush=True)


def run_bare(args, model: Path, dataset: Path, work: Path) -> dict:
    spec = {"model": str(model), "dataset": str(dataset), "settings": settings(args), "lora": LORA,
            "out": str(work / f"bare-{time.time_ns()}"), "spawned": time.time()}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--bare", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"bare run failed:\n{proc.stderr[-3000:]}")


# -- the Win-Train side -------------------------------------------------------------------------

def run_job(args, stub) -> dict:
    from wintrain.train.v1 import train_pb2

    config = train_pb2.TrainingConfig(**settings(args), lora_config=train_pb2.LoraConfig(**LORA))
    started = time.time()
    resp = stub.StartTraining(train_pb2.StartTrainingRequest(
        strategy=train_pb2.STRATEGY_DPO, dataset_path=f"datasets/{DATASET}",
        output_dir=f"out/job-{time.time_ns()}", config=config), timeout=120)
    for _ in stub.WatchTraining(train_pb2.WatchTrainingRequest(task_id=resp.task_id), timeout=3600):
        pass
    task = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=resp.task_id), timeout=30)
    if task.status != train_pb2.TASK_STATUS_COMPLETED:
        raise RuntimeError(f"job failed: {task.error_message}")
    m = task.metrics
    created = datetime.strptime(task.started_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    return {"samples_per_second": m["train_samples_per_second"],
            # StartTraining called -> worker spawned -> first optimizer step done.
            "first_step_seconds": created - started + m["seconds_to_first_step"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of each training process")
    parser.add_argument("--rounds", type=int, default=1, help="bare/job pairs")
    args = parser.parse_args()
    if args.bare:
        bare_main(json.loads(args.bare))
        return 0

    import grpc

    import services  # noqa: F401
    from services.train.server import register
    from tests.support import InProcessServer, make_config
    from tools.tiny_model import DATASETS_DIR, build_tiny_model
    from wintrain.train.v1 import train_pb2_grpc

    work = Path(tempfile.mkdtemp(prefix="wintrain-dpo-bench-"))
    results: dict[str, list[dict]] = {"bare": [], "job": []}
    try:
        model = build_tiny_model(work / "tiny-chat")
        ws = work / "ws"
        (ws / "datasets").mkdir(parents=True)
        shutil.copy(DATASETS_DIR / DATASET, ws / "datasets" / DATASET)
        config = make_config(ws, model, **{"train.worker_threads": args.threads, "train.watch_poll_seconds": 0.05})
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with InProcessServer(config, "train", register) as server:
            with grpc.insecure_channel(server.address) as channel:
                stub = train_pb2_grpc.TrainServiceStub(channel)
                for _ in range(args.rounds):
                    results["bare"].append(run_bare(args, model, ws / "datasets" / DATASET, work))
                    results["job"].append(run_job(args, stub))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    bare, job = med("bare", "samples_per_second"), med("job", "samples_per_second")
    print(f"\nDPO bench: tiny model + LoRA r16, {DATASET}, batch {args.batch}, {args.steps} steps, "
          f"{args.threads} thread(s) per process, median of {args.rounds}")
    print(f"{'':26}{'bare TRL':>12}{'Win-Train job':>16}{'ratio':>8}")
    print(f"{'samples/s':26}{bare:12.2f}{job:16.2f}{job / bare:8.3f}   (goal >= 0.95)")
    print(f"{'start to first step (s)':26}{med('bare', 'first_step_seconds'):12.2f}"
          f"{med('job', 'first_step_seconds'):16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
