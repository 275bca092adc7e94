"""Training strategies: what differs between a full fine-tune and a LoRA run.

A strategy is a small object behind a Protocol (composition, not a base class with hooks):
it says which PEFT config (if any) the SFTTrainer gets, and how the final output is saved.
Everything else (data, trainer, checkpoints) is the same recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from services.train.settings import LoraSettings, TrainingSettings

# Files the Trainer writes into a saved model that a plain Hugging Face loader never reads;
# `training_args.bin` is a pickle, and no pickle belongs in a published model folder.
_NOT_PUBLISHED = ("training_args.bin",)


class TrainingStrategy(Protocol):
    name: str

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
                      lora_dropout=lc.lora_dropout, bias=lc.bias)


STRATEGIES: dict[str, TrainingStrategy] = {s.name: s for s in (FullFineTune(), LoraAdapter())}


def get_strategy(name: str) -> TrainingStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})") from None
