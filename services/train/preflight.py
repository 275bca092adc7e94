"""Pre-flight checks of a StartTraining request, before anything is queued.

`check_start_request` turns a request (plain values) into an `AcceptedTask` with every path
resolved, or raises the domain error naming the field: InvalidArgument (bad values, invalid
dataset rows), PermissionDenied (paths outside the allowed roots, unwritable output),
NotFound (missing files), FailedPrecondition (not a model folder), AlreadyExists (output folder
in use by a live task).

No torch here: the model is checked from its files (config.json, the safetensors headers,
the tokenizer config), so the server process stays small and answers fast.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.config import Config
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from services.common.modeling import resolve_model_source
from services.common.proto_defaults import field_default
from services.common.paths import resolve_allowed_path
from services.train import checkpoints
from services.train.settings import TrainingSettings
from services.train.store import OutputInUse, TaskStore, run_dir
from wintrain.train.v1 import train_pb2

STRATEGIES = ("trl", "lora", "dpo")
# TRL 1.16's DPO losses (DPOConfig.loss_type; a test checks each against the installed TRL).
# `sft` alone is no preference loss and is not offered.
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
# Optimizers and schedulers that work with the installed packages alone (others need
# bitsandbytes, apex, galore… or extra scheduler arguments). A test checks each is known to
# the installed transformers.
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt")
LORA_BIAS = ("none", "all", "lora_only")
# Files that mark a folder as an earlier training output (safe to replace).
OUTPUT_MARKERS = ("config.json", "adapter_config.json", "training_log.jsonl")
MAX_BATCH = 4096
MAX_LENGTH_CAP = 1 << 20


@dataclass
class StartRequest:
    """A StartTraining request as plain values; `settings` is its TrainingConfig, typed, with
    the proto's defaults filled in."""

    strategy: str
    dataset_path: str
    output_dir: str
    settings: TrainingSettings
    eval_dataset_path: str = ""


@dataclass
class AcceptedTask:
    """A request that passed pre-flight. `resolved` holds the absolute paths the worker uses:
    dataset, eval_dataset (or ""), output_dir, model, resume_from (or "")."""

    request: StartRequest
    resolved: dict[str, str]
    train_samples: int = 0
    eval_samples: int = 0
    notes: list[str] = field(default_factory=list)


# -- numbers ------------------------------------------------------------------------------------

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Settings only one objective reads. The interceptor fills every proto default, so a setting
# is refused for the other objective only when its value differs from that default (read from
# the descriptor, not restated here).
DPO_ONLY = ("beta", "loss_type", "max_prompt_length", "rpo_alpha")
# group_by_length groups by `input_ids` length; DPO's tokenized pairs have none (transformers'
# LengthGroupedSampler raises at the first step).
SFT_ONLY = ("group_by_length",)


def check_objective_settings(strategy: str, s: TrainingSettings) -> list[tuple[str, str]]:
    """The settings of the other objective that the client changed from their defaults."""
    fields = train_pb2.TrainingConfig.DESCRIPTOR.fields_by_name
    others, applies = (SFT_ONLY, "strategies trl and lora only") if strategy == "dpo" else \
        (DPO_ONLY, "strategy dpo only")
    bad = []
    for name in others:
        value, default = getattr(s, name), field_default(fields[name])
        if value is not None and value != default:
            bad.append((f"config.{name}", f"applies to {applies}; leave it at its default "
                                          f"({json.dumps(default)}) for strategy {strategy}, got {value!r}"))
    return bad


def evaluation_interval(s: TrainingSettings) -> int:
    """Steps between evaluations on the eval dataset: eval_steps if the client set it; else, with
    early stopping, save_steps (every checkpoint is evaluated, so the best one can be kept);
    else logging_steps."""
    if s.eval_steps is not None:
        return s.eval_steps
    if s.early_stopping_patience is not None and s.save_steps >= 1:
        return s.save_steps
    return s.logging_steps


def check_early_stopping(s: TrainingSettings, has_eval: bool) -> list[tuple[str, str]]:
    """Early stopping watches eval_loss at each evaluation and keeps the best checkpoint: it needs
    an eval dataset, and a checkpoint saved at evaluation steps (save_steps a multiple of them).
    Without eval_steps, evaluations follow save_steps (`evaluation_interval`), so patience alone
    works with the default save_steps."""
    patience, threshold = s.early_stopping_patience, s.early_stopping_threshold
    if patience is None:
        if threshold is not None:
            return [("config.early_stopping_threshold", "applies only with early_stopping_patience, which is not set")]
        return []
    bad = []
    if patience < 1:
        bad.append(("config.early_stopping_patience", f"must be >= 1 (evaluations without improvement), got {patience}"))
    if not has_eval:
        bad.append(("config.early_stopping_patience",
                    "needs eval_dataset_path: early stopping watches the eval_loss of an eval dataset"))
    if threshold is not None and not (_finite(threshold) and threshold >= 0):
        bad.append(("config.early_stopping_threshold", f"must be a finite number >= 0, got {threshold}"))
    every = evaluation_interval(s)
    if has_eval and s.save_steps < 1:
        bad.append(("config.save_steps", "must be >= 1 with early_stopping_patience: the best checkpoint is kept "
                                         "as the output, so there must be checkpoints; got 0"))
    elif has_eval and every >= 1 and s.save_steps % every:
        bad.append(("config.save_steps", f"must be a multiple of eval_steps ({every}) with early_stopping_patience, "
                                         f"so that every checkpoint has an eval_loss (or leave eval_steps unset: "
                                         f"then every checkpoint is evaluated); got {s.save_steps}"))
    return bad


def check_numbers(strategy: str, s: TrainingSettings, config: Config, *,
                  has_eval: bool = False) -> list[tuple[str, str]]:
    """Every out-of-range setting, as (field, description) pairs."""
    bad: list[tuple[str, str]] = []

    def need(name: str, ok: bool, description: str) -> None:
        if not ok:
            bad.append((f"config.{name}", description))

    lr = s.learning_rate
    need("learning_rate", _finite(lr) and lr > 0, f"must be a finite number > 0, got {lr}")
    bs = s.per_device_train_batch_size
    need("per_device_train_batch_size", 1 <= bs <= MAX_BATCH, f"must be between 1 and {MAX_BATCH}, got {bs}")
    ga = s.gradient_accumulation_steps
    need("gradient_accumulation_steps", 1 <= ga <= MAX_BATCH, f"must be between 1 and {MAX_BATCH}, got {ga}")
    if s.max_steps is not None:
        need("max_steps", s.max_steps >= 1, f"must be >= 1, got {s.max_steps}")
    else:
        ep = s.num_train_epochs
        need("num_train_epochs", _finite(ep) and 0 < ep <= 100000, f"must be a number > 0, got {ep}")
    need("warmup_steps", s.warmup_steps >= 0, f"must be >= 0, got {s.warmup_steps}")
    need("logging_steps", s.logging_steps >= 1, f"must be >= 1, got {s.logging_steps}")
    need("optim", s.optim in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}, got {s.optim!r}")
    wd = s.weight_decay
    need("weight_decay", _finite(wd) and wd >= 0, f"must be a finite number >= 0, got {wd}")
    sched = s.lr_scheduler_type
    need("lr_scheduler_type", sched in SCHEDULERS, f"must be one of {', '.join(SCHEDULERS)}, got {sched!r}")
    need("seed", s.seed >= 0, f"must be >= 0, got {s.seed}")
    ml = s.max_length
    need("max_length", 8 <= ml <= MAX_LENGTH_CAP, f"must be between 8 and {MAX_LENGTH_CAP}, got {ml}")
    need("save_steps", s.save_steps >= 0, f"must be >= 0 (0: only at the end), got {s.save_steps}")
    need("save_total_limit", s.save_total_limit >= 1, f"must be >= 1, got {s.save_total_limit}")
    if s.eval_steps is not None:
        need("eval_steps", s.eval_steps >= 1, f"must be >= 1, got {s.eval_steps}")
    max_procs = int(config.get("train.max_processes") or os.cpu_count() or 1)
    n = s.num_processes
    need("num_processes", 1 <= n <= max_procs,
         f"must be between 1 and {max_procs} (train.max_processes), got {n}")
    if strategy == "dpo":
        need("beta", _finite(s.beta) and s.beta > 0, f"must be a finite number > 0, got {s.beta}")
        need("loss_type", s.loss_type in DPO_LOSSES, f"must be one of {', '.join(DPO_LOSSES)}, got {s.loss_type!r}")
        need("rpo_alpha", _finite(s.rpo_alpha) and s.rpo_alpha >= 0,
             f"must be a finite number >= 0 (0: the preference loss alone), got {s.rpo_alpha}")
        mpl = s.max_prompt_length
        need("max_prompt_length", 1 <= mpl < ml,
             f"must be >= 1 and less than max_length ({ml}), which bounds prompt and answer together, got {mpl}")
    bad.extend(check_objective_settings(strategy, s))
    bad.extend(check_early_stopping(s, has_eval))
    lc = s.lora_config
    if lc is not None and strategy == "trl":
        bad.append(("config.lora_config", "strategy trl trains every weight; a LoRA adapter is strategy lora"))
    elif lc is not None:
        if not 1 <= lc.r <= 4096:
            bad.append(("config.lora_config.r", f"must be between 1 and 4096, got {lc.r}"))
        alpha = lc.lora_alpha
        if not (_finite(alpha) and alpha > 0):
            bad.append(("config.lora_config.lora_alpha", f"must be a finite number > 0, got {alpha}"))
        dropout = lc.lora_dropout
        if not (_finite(dropout) and 0 <= dropout < 1):
            bad.append(("config.lora_config.lora_dropout", f"must be in [0, 1), got {dropout}"))
        if lc.bias not in LORA_BIAS:
            bad.append(("config.lora_config.bias", f"must be one of {', '.join(LORA_BIAS)}, got {lc.bias!r}"))
        targets = lc.target_modules
        if not targets:
            bad.append(("config.lora_config.target_modules", "must name at least one module"))
        elif any(not t or not t.strip() for t in targets):
            bad.append(("config.lora_config.target_modules", "must not contain empty names"))
    return bad


# -- the model, from its files ------------------------------------------------------------------

def safetensors_tensor_names(model_dir: Path) -> list[str]:
    """Names of the tensors in a model folder's safetensors files, read from their headers
    (a few KB), without loading any weight."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    names: list[str] = []
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100 * 1024 * 1024:
                raise ValueError(f"{path.name}: implausible safetensors header size {size}")
            header = json.loads(handle.read(size))
        names.extend(k for k in header if k != "__metadata__")
    return names


def module_names(model_dir: Path) -> set[str]:
    """Dotted names of the model's modules that own weights (e.g. model.layers.0.self_attn.q_proj)."""
    return {name.rsplit(".", 1)[0] for name in safetensors_tensor_names(model_dir) if "." in name}


def missing_target_modules(targets: list[str], modules: set[str]) -> list[str]:
    """Targets that match no module the way PEFT matches a list entry: the full name, or its
    last dotted components."""
    missing = []
    for target in targets:
        if not any(m == target or m.endswith("." + target) for m in modules):
            missing.append(target)
    return missing


def has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    tok_cfg = model_dir / "tokenizer_config.json"
    try:
        return bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def known_model_types() -> frozenset[str]:
    """The model types the installed transformers knows, read from the source of its
    CONFIG_MAPPING_NAMES: importing it would import torch into the server process."""
    spec = importlib.util.find_spec("transformers")
    for root in (spec.submodule_search_locations or []) if spec else []:
        source = Path(root) / "models" / "auto" / "configuration_auto.py"
        if source.is_file():
            text = source.read_text(encoding="utf-8")
            start = text.find("CONFIG_MAPPING_NAMES")
            end = text.find("\n)", start)
            return frozenset(re.findall(r'\(\s*"([\w.-]+)"\s*,\s*"\w+"\s*\)', text[start:end]))
    return frozenset()


def needs_remote_code(model_cfg: dict[str, Any]) -> bool:
    """A config.json whose model type the installed transformers does not know and that names
    its own classes (`auto_map`): loading it would run code from the folder."""
    return bool(model_cfg.get("auto_map")) and model_cfg.get("model_type") not in known_model_types()


def check_model(model_dir: Path, strategy: str, s: TrainingSettings, config: Config) -> None:
    """The model folder can be trained with this request. Raises InvalidArgument /
    FailedPrecondition naming config.model_path (or the LoRA field)."""
    field_name = "config.model_path"
    source = resolve_model_source(model_dir, config, field=field_name)
    if source.kind != "full":
        raise InvalidArgument.for_field(
            field_name, f"{model_dir} is a LoRA adapter; train on a full model folder (its base, or a merged model)")
    if not has_chat_template(model_dir):
        raise FailedPrecondition(f"{field_name}: {model_dir} has no chat template in its tokenizer files",
                                 [(field_name, "the tokenizer has no chat template")])
    try:
        model_cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"{field_name}: {model_dir}/config.json is unreadable: {exc}",
                                 [(field_name, "config.json is unreadable")]) from exc
    if needs_remote_code(model_cfg) and not config.get("model.trust_remote_code", False):
        raise InvalidArgument.for_field(
            field_name, f"{model_dir} needs remote code (model_type {model_cfg.get('model_type')!r} with auto_map), "
                        "which is not run here (model.trust_remote_code is off)")
    limit = model_cfg.get("max_position_embeddings")
    if isinstance(limit, int) and s.max_length > limit:
        raise InvalidArgument.for_field("config.max_length",
                                        f"must be <= {limit}, the model's max_position_embeddings")
    if s.lora_config is not None:
        try:
            modules = module_names(model_dir)
        except (OSError, ValueError, struct.error) as exc:
            raise FailedPrecondition(f"{field_name}: cannot read the weights of {model_dir}: {exc}",
                                     [(field_name, "unreadable safetensors")]) from exc
        if model_cfg.get("tie_word_embeddings") and any(m == "embed_tokens" or m.endswith(".embed_tokens")
                                                        for m in modules):
            modules.add("lm_head")  # tied: the checkpoint stores the head only as embed_tokens
        targets = list(s.lora_config.target_modules)
        saved = list(s.lora_config.modules_to_save)
        missing_saved = missing_target_modules(saved, modules)
        if missing_saved:
            raise InvalidArgument.for_field("config.lora_config.modules_to_save",
                                            f"{', '.join(missing_saved)} not found in the model")
        missing = missing_target_modules(targets, modules)
        if missing:
            short = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.endswith(("norm", "embed_tokens"))})
            raise InvalidArgument.for_field(
                "config.lora_config.target_modules",
                f"{', '.join(missing)} not found in the model; it has {', '.join(short[:20])}")
        if any(t == "lm_head" or t.endswith(".lm_head") for t in targets):
            raise InvalidArgument.for_field("config.lora_config.target_modules",
                                            "lm_head cannot carry a LoRA adapter here (TRL computes the loss from its weight); "
                                            'train it in full with modules_to_save: ["lm_head"]')


# -- the output folder --------------------------------------------------------------------------

def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_dir(out: Path, *, protected: list[Path], store: TaskStore, own_task: str = "") -> None:
    """`out` can receive a finished model: not a file, not a folder that holds anything the
    system or the request needs, not someone else's data, writable, and not the output of
    another live task. Raises InvalidArgument / FailedPrecondition / PermissionDenied /
    AlreadyExists."""
    name = "output_dir"
    if out.exists() and not out.is_dir():
        raise InvalidArgument.for_field(name, f"{out} is a file, expected a folder")
    for keep in protected:
        if _inside(keep, out):
            raise InvalidArgument.for_field(
                name, f"{out} contains {keep}, which the service or this request needs; it would be replaced")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in OUTPUT_MARKERS):
        raise FailedPrecondition(
            f"{name}: {out} exists, is not empty and is not an earlier training output; choose a new folder",
            [(name, "exists and holds other files")])
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionDenied(f"{name}: {probe} is not writable", [(name, "not writable")])
    owner = store.live_owner(str(out), own_task)
    if owner is not None:
        raise output_in_use(OutputInUse(str(out), owner.task_id, owner.status))


def output_in_use(exc: OutputInUse) -> AlreadyExists:
    """The 409 a client gets when another live task owns the output folder (found by the early
    check, or by the store's check in the transaction that inserts the task)."""
    return AlreadyExists(f"output_dir: {exc}", [("output_dir", f"used by live task {exc.task_id}")])


# -- the whole request --------------------------------------------------------------------------

def resolve_resume(raw: str, out: Path, config: Config, store: TaskStore) -> Path:
    """`config.resume_from_checkpoint` of a new task: `last` (the newest checkpoint of an
    earlier task that wrote to the same output folder) or a checkpoint folder."""
    name = "config.resume_from_checkpoint"
    if raw.strip().lower() == "last":
        for task in store.previous_tasks_for_output(str(out)):
            found = checkpoints.latest_checkpoint(run_dir(config.workspace, task.task_id) / "checkpoints")
            if found is not None:
                return found
        raise FailedPrecondition(f"{name}: no earlier task that wrote to {out} left a checkpoint",
                                 [(name, "no checkpoint to resume from")])
    folder = resolve_allowed_path(raw, config, field=name, must_exist=True, expect="dir")
    try:
        checkpoints.check_checkpoint_files(folder)
    except checkpoints.CheckpointError as exc:
        raise InvalidArgument.for_field(name, str(exc)) from None
    return folder


def check_start_request(req: StartRequest, config: Config, store: TaskStore) -> AcceptedTask:
    """Every pre-flight check, cheapest first; the dataset is validated last. Returns the
    accepted task with resolved paths, or raises the domain error naming the field."""
    from services.common.dataset.validate import validate_rows_for_training

    if req.strategy not in STRATEGIES:
        raise InvalidArgument.for_field(
            "strategy", f"must be `trl`, `lora` or `dpo` (gRPC: STRATEGY_TRL, STRATEGY_LORA or STRATEGY_DPO), "
                        f"got {req.strategy or 'nothing'!r}")
    bad = check_numbers(req.strategy, req.settings, config, has_eval=bool(req.eval_dataset_path))
    if bad:
        raise InvalidArgument.for_fields(bad)

    dataset = resolve_allowed_path(req.dataset_path, config, field="dataset_path", must_exist=True, expect="file")
    eval_dataset = None
    if req.eval_dataset_path:
        eval_dataset = resolve_allowed_path(req.eval_dataset_path, config, field="eval_dataset_path",
                                            must_exist=True, expect="file")
    out = resolve_allowed_path(req.output_dir, config, field="output_dir", expect="dir")
    raw_model = req.settings.model_path or ""
    if raw_model:
        model = resolve_allowed_path(raw_model, config, field="config.model_path", must_exist=True, expect="dir")
    else:
        model = config.base_model_path
    check_model(model, req.strategy, req.settings, config)

    workspace = config.workspace
    if _inside(out, workspace / "runs"):
        raise InvalidArgument.for_field("output_dir", f"{out} is inside the service's task folders ({workspace / 'runs'})")
    protected = [workspace / "jobs.db", workspace / "runs", dataset, model, *config.allowed_roots]
    if eval_dataset is not None:
        protected.append(eval_dataset)
    check_output_dir(out, protected=protected, store=store)

    resume = None
    if req.settings.resume_from_checkpoint:
        resume = resolve_resume(req.settings.resume_from_checkpoint, out, config, store)

    max_row_bytes = int(config.get("dataset.max_row_bytes", 1 << 20))
    # `dpo` trains on preference pairs, the others on conversations: a file of the other kind is
    # refused naming the field, and so is a file with bad rows (the first line numbers named).
    kind = "preference" if req.strategy == "dpo" else "sft"
    report = validate_rows_for_training(dataset, max_row_bytes=max_row_bytes, field="dataset_path", kind=kind)
    eval_samples = 0
    if eval_dataset is not None:
        eval_report = validate_rows_for_training(eval_dataset, max_row_bytes=max_row_bytes, field="eval_dataset_path",
                                                 kind=kind)
        eval_samples = eval_report.valid_samples
    return AcceptedTask(
        request=req,
        resolved={
            "dataset": str(dataset),
            "eval_dataset": str(eval_dataset) if eval_dataset else "",
            "output_dir": str(out),
            "model": str(model),
            "resume_from": str(resume) if resume else "",
        },
        train_samples=report.valid_samples,
        eval_samples=eval_samples,
    )
