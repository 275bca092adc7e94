"""Model and tokenizer loading shared by train, inference, eval and export.

Local folders only; safetensors only and `trust_remote_code=False` unless config says
otherwise; device picked automatically (CUDA with bf16 when present, else CPU fp32).
A folder with `config.json` is a full model; one with `adapter_config.json` is a LoRA
adapter whose base comes from its config (or the configured base model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import Config
from services.common.errors import FailedPrecondition, NotFound
from services.common.paths import check_within_roots


@dataclass(frozen=True)
class ModelSource:
    """What a model path names. `path` is the folder asked for; `base_path` the full model
    to load; `adapter_path` the adapter to apply on it (None for a full model)."""

    path: Path
    kind: str  # "full" | "adapter"
    base_path: Path
    adapter_path: Path | None = None


def _has_weights(folder: Path, safetensors_only: bool) -> bool:
    if any(folder.glob("*.safetensors")):
        return True
    return not safetensors_only and any(folder.glob("*.bin"))


def resolve_model_source(path: Path, config: Config, *, field: str = "model_path",
                         trusted: bool = False) -> ModelSource:
    """Classify an already path-checked folder. Raises NotFound (missing),
    FailedPrecondition (not a model folder, no safetensors weights, adapter without base) or
    PermissionDenied (an adapter whose base lies outside the allowed roots, see
    `check_adapter_base`). `trusted` is for server-side paths from the config (the default
    model), whose adapter base is the operator's choice."""
    safetensors_only = bool(config.get("model.safetensors_only", True))
    if not path.exists():
        raise NotFound(f"{field}: {path} does not exist", [(field, "does not exist")])
    if not path.is_dir():
        raise FailedPrecondition(f"{field}: {path} is not a model folder (it is a file)", [(field, "not a folder")])
    if (path / "adapter_config.json").is_file():
        try:
            adapter_cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"{field}: {path}/adapter_config.json is unreadable: {exc}") from exc
        base = _adapter_base(adapter_cfg, path, config)
        if not trusted:
            check_adapter_base(base, config, field=field)
        if not _has_weights(path, safetensors_only):
            raise FailedPrecondition(f"{field}: adapter {path} has no safetensors weights")
        return ModelSource(path=path, kind="adapter", base_path=base, adapter_path=path)
    if (path / "config.json").is_file():
        if not _has_weights(path, safetensors_only):
            raise FailedPrecondition(
                f"{field}: {path} has no *.safetensors weights"
                + (" (model.safetensors_only is on)" if safetensors_only else "")
            )
        return ModelSource(path=path, kind="full", base_path=path)
    raise FailedPrecondition(
        f"{field}: {path} is not a model folder (no config.json or adapter_config.json)",
        [(field, "not a model folder")],
    )


def check_adapter_base(base: Path, config: Config, *, field: str = "model_path") -> None:
    """The one check on an adapter's base model: the folder its `adapter_config.json`
    `base_model_name_or_path` resolved to must lie inside `storage.allowed_roots`, like any
    client path (the adapter folder is client-supplied, so its config is client input). The
    configured base model (`model.base_model_path`) is always allowed: it is the operator's
    choice and what an adapter trained on the default names. Raises PermissionDenied naming
    `field`. `resolve_model_source` calls it for every client path; call it directly where an
    adapter base is resolved another way."""
    resolved = Path(base).resolve(strict=False)
    if resolved == config.base_model_path.resolve():
        return
    check_within_roots(resolved, config, field=field,
                       what="the adapter's base model (adapter_config.json base_model_name_or_path)")


def _adapter_base(adapter_cfg: dict, adapter_path: Path, config: Config) -> Path:
    named = adapter_cfg.get("base_model_name_or_path")
    candidates = []
    if named:
        p = Path(named)
        candidates.append(p if p.is_absolute() else (adapter_path / p))
        if not p.is_absolute():
            candidates.append(config.workspace / p)
            candidates.append(config.base_dir / p)
    candidates.append(config.base_model_path)
    for cand in candidates:
        if (cand / "config.json").is_file():
            return cand.resolve()
    raise FailedPrecondition(
        f"adapter {adapter_path}: its base model {named!r} was not found, nor the configured "
        f"base model {config.base_model_path}"
    )


def pick_device(config: Config) -> tuple[str, Any]:
    """(device, torch dtype): CUDA with bf16 when present and allowed, else CPU fp32."""
    import torch

    wanted = str(config.get("model.device", "auto"))
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return "cuda", dtype
    if wanted == "cuda":
        raise FailedPrecondition("model.device is cuda but no CUDA device is available")
    return "cpu", torch.float32


def load_tokenizer(path: Path, config: Config):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=bool(config.get("model.trust_remote_code", False))
    )


def load_model(
    source: ModelSource,
    config: Config,
    *,
    device: str | None = None,
    dtype: Any = None,
    merge_adapter: bool = False,
    trainable: bool = False,
):
    """Load (model, tokenizer) for a ModelSource. Adapters are applied with PEFT, and merged
    into the weights when `merge_adapter`. The tokenizer comes from the adapter folder when it
    has one, else from the base. Raises FailedPrecondition when loading fails."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if device is None or dtype is None:
        auto_device, auto_dtype = pick_device(config)
        device = device or auto_device
        dtype = dtype or auto_dtype
    trust = bool(config.get("model.trust_remote_code", False))
    safetensors_only = bool(config.get("model.safetensors_only", True))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.base_path),
            dtype=dtype,
            trust_remote_code=trust,
            use_safetensors=True if safetensors_only else None,
        )
        if source.adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(source.adapter_path), is_trainable=trainable)
            if merge_adapter:
                model = merge_untied(model)
        tok_dir = source.adapter_path if source.adapter_path and (source.adapter_path / "tokenizer_config.json").is_file() else source.base_path
        tokenizer = load_tokenizer(tok_dir, config)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise FailedPrecondition(f"cannot load model {source.path}: {exc}") from exc
    model.to(device)
    if not trainable:
        model.eval()
    return model, tokenizer


def merge_untied(peft_model):
    """`merge_and_unload`, except that an adapter which changes the output head (lm_head in
    `target_modules` or `modules_to_save`) of a base that ties lm_head to the input embeddings
    first gets the head its own copy of the weight and `tie_word_embeddings=False`: merging into
    the shared tensor would rewrite the input embeddings too (PEFT warns about exactly this; the
    tiny model then answers nothing), and a tied config would drop the merged head on save."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    head = base.get_output_embeddings()
    if getattr(base.config, "tie_word_embeddings", False) and isinstance(head, (BaseTunerLayer, ModulesToSaveWrapper)):
        layer = head.get_base_layer() if isinstance(head, BaseTunerLayer) else head.original_module
        embeddings = base.get_input_embeddings()
        if embeddings is not None and layer.weight is embeddings.weight:
            layer.weight = torch.nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    return peft_model.merge_and_unload()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_memory_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
