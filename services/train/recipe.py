"""The training recipe, top to bottom: load, prepare data, build the trainer, train, save.

Runs inside a worker process (one per task, or one per rank under torchrun). The strategy
decides the objective, the PEFT config and how the output is saved: `trl` (full fine-tune) and
`lora` train with TRL's SFTTrainer on conversations (the chat template of the tokenizer, the loss
on assistant tokens only); `dpo` trains with TRL's DPOTrainer on preference pairs, with or without
a LoRA adapter. Every run writes TensorBoard event files into its run folder
(`<workspace>/runs/<task>/tensorboard`), and with `early_stopping_patience` stops when eval_loss
stops improving and publishes the best checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import Config
from services.train import checkpoints
from services.train.plots import dedupe_log, plot_losses, read_log
from services.train.preflight import evaluation_interval
from services.train.progress import ProgressCallback, StopControl, is_main_process
from services.train.settings import TrainingSettings
from services.train.store import TaskStore
from services.train.strategies import DPO, get_strategy

COMPLETED = "completed"


@dataclass
class RunSpec:
    """Everything one run needs, with absolute paths."""

    task_id: str
    attempt: int
    strategy: str
    settings: TrainingSettings
    dataset: Path
    output_dir: Path
    model: Path
    run_dir: Path
    eval_dataset: Path | None = None
    resume_from: Path | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "training_log.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"


@dataclass
class RunResult:
    """How the run ended: `completed`, or the stop reason (`cancel`, `signal`, `fenced`)."""

    outcome: str
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str = ""
    first_step_seconds: float | None = None  # train begin -> first step done
    first_step_wall: float | None = None  # time.time() of the first step done
    note: str = ""  # for the task's message: where early stopping stopped, which checkpoint is best


def load_conversations(path: Path, max_row_bytes: int):
    """The dataset file (JSONL or a JSON array of conversation rows) as a `datasets.Dataset`
    with one `messages` column, the conversational format TRL expects."""
    from datasets import Dataset

    from services.common.dataset.reader import RowError, RowReader, parse_row
    from services.common.dataset.rules import explain_row

    rows = []
    reader = RowReader(path, max_row_bytes=max_row_bytes)
    for number, raw in reader:
        obj = raw
        if not isinstance(raw, RowError):
            try:
                obj = parse_row(raw.decode("utf-8"))
            except UnicodeDecodeError:
                obj = RowError("invalid_utf8", "", "text is not valid UTF-8")
        if isinstance(obj, RowError):
            raise ValueError(f"{path}: {reader.label} {number}: {obj.detail}")
        problems = explain_row(obj)  # the rules pre-flight applied: one copy
        if problems:
            raise ValueError(f"{path}: {reader.label} {number}: {problems[0][2]}")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]}
                                  for m in obj["conversations"]]})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return Dataset.from_list(rows)


def load_preference_pairs(path: Path, max_row_bytes: int):
    """The preference file (any format the dataset library reads) as a `datasets.Dataset` in
    TRL's conversational preference shape: `prompt`, `chosen`, `rejected` message lists."""
    from datasets import Dataset

    from services.common.dataset.preference import read_preference_rows

    rows = read_preference_rows(path, max_row_bytes=max_row_bytes)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return Dataset.from_list([row.as_trl() for row in rows])


def trainer_arguments(spec: RunSpec, device: str) -> dict:
    """The TrainingArguments both objectives share, from the task's settings (the proto's
    defaults are already filled in)."""
    import torch

    s = spec.settings
    on_gpu = device == "cuda"
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    has_eval = spec.eval_dataset is not None
    early = s.early_stopping_patience is not None
    return dict(
        output_dir=str(spec.checkpoint_dir),
        per_device_train_batch_size=s.per_device_train_batch_size,
        per_device_eval_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        learning_rate=s.learning_rate,
        max_steps=s.max_steps if s.max_steps is not None else -1,
        num_train_epochs=s.num_train_epochs,
        warmup_steps=s.warmup_steps,
        logging_strategy="steps",
        logging_steps=s.logging_steps,
        optim=s.optim,
        weight_decay=s.weight_decay,
        lr_scheduler_type=s.lr_scheduler_type,
        seed=s.seed,
        group_by_length=s.group_by_length,
        save_strategy="steps" if s.save_steps > 0 else "no",
        save_steps=s.save_steps if s.save_steps > 0 else 500,
        save_total_limit=s.save_total_limit,
        save_safetensors=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=evaluation_interval(s) if has_eval else None,
        # save_total_limit keeps the checkpoint with the best eval loss as well as the latest
        # ones (the Trainer's rotation spares state.best_model_checkpoint). The final output is
        # the last step's model, except with early stopping (pre-flight checked an eval dataset
        # and save_steps a multiple of the eval steps; without eval_steps every checkpoint is
        # evaluated, see evaluation_interval): then the best one is loaded at the end.
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        load_best_model_at_end=early,
        # Checkpointing trades compute for memory; on CPU there is no memory to save.
        gradient_checkpointing=on_gpu,
        bf16=bf16,
        fp16=on_gpu and not bf16,
        use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        # Train and eval curves of every task: `tensorboard --logdir <workspace>/runs`.
        report_to=["tensorboard"],
        logging_dir=str(spec.tensorboard_dir),
        disable_tqdm=True,
    )


def build_sft_config(spec: RunSpec, device: str):
    """SFTConfig from the task's settings."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(spec, device),
        max_length=spec.settings.max_length,
        # The loss is on what the assistant says (the chat template marks it with
        # {% generation %}), never on the prompt.
        assistant_only_loss=True,
    )


def build_dpo_config(spec: RunSpec, device: str):
    """DPOConfig from the task's settings: TRL's `beta` and `loss_type`, with TRL's `sft` loss
    weighted `rpo_alpha` beside it when that is > 0 (RPO); `max_length` bounds prompt and
    completion (the prompt is first cut to `max_prompt_length`, see `dpo_trainer`)."""
    from trl import DPOConfig

    s = spec.settings
    losses = {s.loss_type: 1.0, **({"sft": s.rpo_alpha} if s.rpo_alpha > 0 else {})}
    return DPOConfig(**trainer_arguments(spec, device), max_length=s.max_length, beta=s.beta,
                     loss_type=list(losses), loss_weights=list(losses.values()))


def dpo_trainer(max_prompt_length: int):
    """TRL's DPOTrainer, with prompts cut to their last `max_prompt_length` tokens (the turns
    next to the answer). TRL 1.16 has no such setting; it drops a pair whose prompt alone fills
    `max_length` instead, which the cut makes impossible (pre-flight keeps it below)."""
    from trl import DPOTrainer

    class PromptLimitedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if "prompt_ids" not in dataset.column_names:
                return dataset
            return dataset.map(lambda row: {"prompt_ids": row["prompt_ids"][-max_prompt_length:]})

    return PromptLimitedDPOTrainer


def early_stopping_note(settings: TrainingSettings, state) -> str:
    """Where an early-stopping run stopped and which checkpoint is the best (the output)."""
    if settings.early_stopping_patience is None:
        return ""
    step, total = int(state.global_step), int(state.max_steps)
    where = (f"stopped early at step {step} of {total}: eval_loss did not improve for "
             f"{settings.early_stopping_patience} evaluations" if step < total
             else f"ran all {total} steps without stopping early")
    best = state.best_model_checkpoint
    if best:
        where += f"; best checkpoint: {Path(best).name} (eval_loss {state.best_metric:.4f}), saved as the output"
    return where


def run(spec: RunSpec, config: Config, *, store: TaskStore | None, stop: StopControl) -> RunResult:
    """Train one task. Returns how it ended; raises on errors (the worker reports them)."""
    import torch
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    from services.common.modeling import ModelSource, load_model, pick_device

    import datasets

    datasets.disable_progress_bars()
    main = is_main_process()

    def stop_requested() -> str | None:
        return stop.poll(force=True) if main else ("signal" if stop.signalled else None)

    if stop_requested():  # cancelled while the worker was starting: no need to load anything
        return RunResult(outcome=stop_requested() or "signal", last_checkpoint=str(spec.resume_from or ""))
    strategy = get_strategy(spec.strategy, spec.settings)
    device, _ = pick_device(config)

    # 1. Load the model and its tokenizer (fp32 weights; mixed precision is the Trainer's job).
    source = ModelSource(path=spec.model, kind="full", base_path=spec.model)
    model, tokenizer = load_model(source, config, device="cpu", dtype=torch.float32, trainable=True)

    # 2. Prepare the data: conversations -> `messages`, or preference pairs -> `prompt`,
    # `chosen`, `rejected` (message lists); TRL applies the chat template.
    max_row_bytes = int(config.get("dataset.max_row_bytes", 1 << 20))
    load = load_preference_pairs if strategy.objective == DPO else load_conversations
    train_dataset = load(spec.dataset, max_row_bytes)
    eval_dataset = load(spec.eval_dataset, max_row_bytes) if spec.eval_dataset else None

    # 3. Build the trainer.
    spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressCallback(store if main else None, spec.task_id, spec.attempt, stop,
                                spec.log_path if main else None)
    callbacks = [progress]
    if spec.settings.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.settings.early_stopping_patience,
                                               early_stopping_threshold=spec.settings.early_stopping_threshold or 0.0))
    common = dict(model=model, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                  peft_config=strategy.peft_config(spec.settings), callbacks=callbacks)
    if strategy.objective == DPO:
        # ref_model None: with a LoRA adapter the reference is the base (adapter disabled); for a
        # full DPO, TRL loads a frozen copy of the model folder.
        trainer = dpo_trainer(spec.settings.max_prompt_length)(args=build_dpo_config(spec, device), ref_model=None,
                                                               **common)
    else:
        trainer = SFTTrainer(args=build_sft_config(spec, device), **common)

    # 4. Train (from a checkpoint when resuming; its pickles are checked first).
    resume = None
    if spec.resume_from is not None:
        checkpoints.verify_checkpoint_pickles(spec.resume_from)
        resume = str(spec.resume_from)
    reason = stop_requested()
    if reason is not None:
        return RunResult(outcome=reason, last_checkpoint=str(spec.resume_from or ""))
    output = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    result = RunResult(outcome=COMPLETED, step=int(state.global_step), total_steps=int(state.max_steps),
                       metrics={k: float(v) for k, v in (output.metrics or {}).items()
                                if isinstance(v, (int, float))},
                       last_checkpoint=progress.last_checkpoint, first_step_seconds=progress.first_step_seconds,
                       first_step_wall=progress.first_step_wall,
                       note=early_stopping_note(spec.settings, state))
    if progress.stopped_reason is not None:
        result.outcome = progress.stopped_reason
        return result

    # 5. Save the final output atomically: a temporary sibling folder renamed into place.
    if main:
        from services.common.fsutil import atomic_directory

        entries = dedupe_log(read_log(spec.log_path))
        with atomic_directory(spec.output_dir, overwrite=True) as tmp:
            strategy.save(trainer, tokenizer, tmp, spec.model)
            with open(tmp / "training_log.jsonl", "w", encoding="utf-8") as handle:
                for entry in entries:
                    handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            plot_losses(entries, tmp / "loss.png", title=f"{spec.strategy} · task {spec.task_id[:8]}")
            _make_readable(tmp)
        losses = [e["loss"] for e in entries if e.get("kind") == "train" and "loss" in e]
        if losses:
            result.metrics["final_loss"] = float(losses[-1])
    return result


def _make_readable(folder: Path) -> None:
    # Temporary files are created owner-only; a published model is meant to be read by others
    # (e.g. the inference service running as another user).
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
