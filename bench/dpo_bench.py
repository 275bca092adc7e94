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

import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import (  # noqa: E402
    FirstStepTimer, emit, load_model, print_header, read_jsonl, run_bare, run_job, stamp, train_service,
    trainer_kwargs, training_parser,
)

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
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                 for r in read_jsonl(spec["dataset"])])
    tokenizer, model = load_model(spec["model"])
    args = DPOConfig(**trainer_kwargs(spec, "beta"))
    first = FirstStepTimer(spawned)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **spec["lora"]), callbacks=[first])
    out = trainer.train()
    emit({"samples_per_second": out.metrics["train_samples_per_second"], "first_step_seconds": first.seconds})


# -- the Win-Train side -------------------------------------------------------------------------

def job_figures(args, stub) -> dict:
    from wintrain.train.v1 import train_pb2

    config = train_pb2.TrainingConfig(**settings(args), lora_config=train_pb2.LoraConfig(**LORA))
    job = run_job(stub, train_pb2.STRATEGY_DPO, DATASET, config)
    m = job.task.metrics
    return {"samples_per_second": m["train_samples_per_second"],
            # StartTraining called -> worker spawned -> first optimizer step done.
            "first_step_seconds": stamp(job.task.started_at) - job.started + m["seconds_to_first_step"]}


def main() -> int:
    parser = training_parser(__doc__, steps=20, steps_help=None, rounds=1, rounds_help="bare/job pairs")
    args = parser.parse_args()
    if args.bare:
        bare_main(json.loads(args.bare))
        return 0

    results: dict[str, list[dict]] = {"bare": [], "job": []}
    with train_service("wintrain-dpo-bench-", DATASET, args.threads) as service:
        bare_spec = {"model": str(service.model), "dataset": str(service.dataset), "settings": settings(args),
                     "lora": LORA}
        for _ in range(args.rounds):
            results["bare"].append(run_bare(__file__, bare_spec, args.threads, service.work))
            results["job"].append(job_figures(args, service.stub))

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    bare, job = med("bare", "samples_per_second"), med("job", "samples_per_second")
    print_header(f"DPO bench: tiny model + LoRA r16, {DATASET}", args, 26)
    print(f"{'samples/s':26}{bare:12.2f}{job:16.2f}{job / bare:8.3f}   (goal >= 0.95)")
    print(f"{'start to first step (s)':26}{med('bare', 'first_step_seconds'):12.2f}"
          f"{med('job', 'first_step_seconds'):16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
