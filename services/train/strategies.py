"""Training strategies: what differs between a full fine-tune, a LoRA run and a DPO run.

A strategy is a small object behind a Protocol (composition, not a base class with hooks):
it says which objective (TRL trainer) trains it, which PEFT config (if any) the trainer gets,
and how the final output is saved. Everything else (data loading, checkpoints, progress) is the
same recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from services.train.settings import LoraSettings, TrainingSettings

# Files the Trainer writes into a saved model that a plain Hugging Face loader never reads;
# `training_args.bin` is a pickle, and no pickle belongs in a published model folder.
_NOT_PUBLISHED = ("training_args.bin",)


SFT, DPO = "sft", "dpo"  # objectives: TRL's SFTTrainer on conversations, DPOTrainer on preference pairs


class TrainingStrategy(Protocol):
    name: str
    objective: str

    def peft_config(self, settings: TrainingSettings) -> Any | None:
        """The PEFT config SFTTrainer wraps the model with, or None to train every weight."""

    def save(self, trainer: Any, tokenizer: Any, out_dir: Path, base_model: Path) -> None:
        """Write the final, loadable output into `out_dir` (an empty temporary folder)."""


def _tidy(out_dir: Path) -> None:
    for name in _NOT_PUBLISHED:
        (out_dir / name).unlink(missing_ok=True)


class FullFineTune:
    """`trl`: SFTTrainer updates every weight; the output is a complete model folder
    (safetensors, config, generation config, tokenizer with its chat template)."""

    name = "trl"
    objective = SFT

    def peft_config(self, settings: TrainingSettings) -> None:
        return None

    def save(self, trainer: Any, tokenizer: Any, out_dir: Path, base_model: Path) -> None:
        trainer.save_model(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        _tidy(out_dir)


class LoraAdapter:
    """`lora`: SFTTrainer with a PEFT LoraConfig; the output is an adapter folder whose
    adapter_config.json names its base model folder (absolute path), plus the tokenizer."""

    name = "lora"
    objective = SFT

    def peft_config(self, settings: TrainingSettings) -> Any:
        return lora_config(settings.lora_config or LoraSettings.defaults())

    def save(self, trainer: Any, tokenizer: Any, out_dir: Path, base_model: Path) -> None:
        trainer.save_model(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        _tidy(out_dir)
        cfg_path = out_dir / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if adapter_cfg.get("base_model_name_or_path") != str(base_model):
            adapter_cfg["base_model_name_or_path"] = str(base_model)
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def lora_config(lc: LoraSettings) -> Any:
    """PEFT's LoraConfig from the task's LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=lc.r, lora_alpha=lc.lora_alpha, target_modules=list(lc.target_modules),
                      lora_dropout=lc.lora_dropout, bias=lc.bias, modules_to_save=list(lc.modules_to_save) or None)


class DirectPreference:
    """`dpo`: TRL's DPOTrainer on preference pairs. With `lora_config` it trains a LoRA adapter
    (the reference is the same model with the adapter disabled: no second copy) and the output is
    an adapter folder, as `lora`'s; without it every weight is trained against a frozen reference
    copy and the output is a full model folder, as `trl`'s."""

    name = "dpo"
    objective = DPO

    def __init__(self, lora: bool):
        self.lora = lora
        self._output: TrainingStrategy = LoraAdapter() if lora else FullFineTune()

    def peft_config(self, settings: TrainingSettings) -> Any | None:
        return self._output.peft_config(settings)

    def save(self, trainer: Any, tokenizer: Any, out_dir: Path, base_model: Path) -> None:
        self._output.save(trainer, tokenizer, out_dir, base_model)


STRATEGIES = ("trl", "lora", "dpo")


def get_strategy(name: str, settings: TrainingSettings) -> TrainingStrategy:
    if name == "trl":
        return FullFineTune()
    if name == "lora":
        return LoraAdapter()
    if name == "dpo":
        return DirectPreference(lora=settings.lora_config is not None)
    raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
