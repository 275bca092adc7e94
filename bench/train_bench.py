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

DATASET = "bilingual_chat.jsonl"


def settings(args, group: bool) -> dict:
    return dict(per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, learning_rate=1e-4,
                max_steps=args.steps, warmup_steps=2, logging_steps=5, save_steps=0, max_length=512,
                seed=42, lr_scheduler_type="linear", weight_decay=0.01, group_by_length=group)


# -- the bare side ------------------------------------------------------------------------------

def bare_main(spec: dict) -> None:
    """Plain TRL: load, SFTTrainer, train. Prints one JSON line with the figures."""
    spawned = spec["spawned"]
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"messages": r["conversations"]} for r in read_jsonl(spec["dataset"])])
    tokenizer, model = load_model(spec["model"])
    args = SFTConfig(**trainer_kwargs(spec, "group_by_length"), assistant_only_loss=True)
    counts = {"real": 0, "padded": 0}
    first = FirstStepTimer(spawned)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[first])
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        counts["padded"] += int(batch["input_ids"].numel())
        counts["real"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting
    out = trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    emit({
        "tokens": tokens[-1], "runtime": out.metrics["train_runtime"],
        "tokens_per_second": tokens[-1] / out.metrics["train_runtime"],
        "first_step_seconds": first.seconds,
        "padding_waste": 1 - counts["real"] / max(counts["padded"], 1),
    })


# -- the Win-Train side -------------------------------------------------------------------------

def job_figures(args, stub, group: bool) -> dict:
    from wintrain.train.v1 import train_pb2

    config = train_pb2.TrainingConfig(**settings(args, group))
    job = run_job(stub, train_pb2.STRATEGY_TRL, DATASET, config)
    task, m = job.task, job.task.metrics
    return {
        "tokens": m["num_tokens"], "runtime": m["train_runtime"],
        "tokens_per_second": m["num_tokens"] / m["train_runtime"],
        "accept_seconds": job.accepted - job.started,
        # StartTraining accepted -> worker spawned -> first optimizer step done.
        "queue_seconds": stamp(task.started_at) - stamp(task.created_at),
        "first_step_seconds": stamp(task.started_at) - stamp(task.created_at) + m["seconds_to_first_step"],
    }


def main() -> int:
    parser = training_parser(__doc__, steps=45, steps_help="optimizer steps per run (45 = one epoch at batch 8)",
                             rounds=2, rounds_help="bare/job pairs per setting")
    args = parser.parse_args()
    if args.bare:
        bare_main(json.loads(args.bare))
        return 0

    results: dict[tuple[str, bool], list[dict]] = {}
    with train_service("wintrain-train-bench-", DATASET, args.threads) as service:
        for group in (False, True):
            bare_spec = {"model": str(service.model), "dataset": str(service.dataset),
                         "settings": settings(args, group)}
            for _ in range(args.rounds):
                results.setdefault(("bare", group), []).append(
                    run_bare(__file__, bare_spec, args.threads, service.work))
                results.setdefault(("job", group), []).append(job_figures(args, service.stub, group))

    def med(side: str, group: bool, key: str) -> float:
        values = [r[key] for r in results[(side, group)] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    print_header(f"Training bench: tiny model, {DATASET}", args, 28)
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
