"""The model registry: which model a request means, and an LRU cache of loaded models.

A request names a full model folder, a LoRA adapter folder (served on its base model, merged),
or nothing (the configured default, `model.base_model_path`, a server-side path that is not
path-checked). Loaded models are kept, most recently used first, within
`inference.cache_max_models` and `inference.cache_max_bytes`. Loading is single-flight: two
requests for the same unloaded model wait on one load. Everything here blocks (disk, torch):
call it from a worker thread, never from the event loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from services.common.metrics import MODEL_CACHE_BYTES, MODEL_CACHE_MODELS
from services.common.config import Config
from services.common.errors import FailedPrecondition, NotFound, ServiceError
from services.common.modeling import ModelSource, count_parameters, load_model, model_memory_bytes, resolve_model_source
from services.common.paths import resolve_allowed_path

log = logging.getLogger("wintrain.inference")

# (source, config) -> (model, tokenizer); tests may wrap the real loader (e.g. to hold a load).
Loader = Callable[[ModelSource, Config], tuple[Any, Any]]


def default_loader(source: ModelSource, config: Config):
    # Each cached adapter owns its own copy of the base, so merging is safe and makes
    # generation as fast as with a full model.
    return load_model(source, config, merge_adapter=True)


@dataclass
class LoadedModel:
    """A model in the cache with what generation needs to know about it."""

    key: str
    source: ModelSource
    model: Any
    tokenizer: Any
    is_default: bool
    parameters: int
    memory_bytes: int
    device: str
    dtype: str
    eos_ids: tuple[int, ...]
    pad_id: int
    loaded_at: float
    last_used: float

    @property
    def last_used_iso(self) -> str:
        return datetime.fromtimestamp(self.last_used, timezone.utc).isoformat(timespec="milliseconds")


def _token_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def describe_model(key: str, source: ModelSource, model, tokenizer, is_default: bool) -> LoadedModel:
    eos = _token_ids(tokenizer.eos_token_id)
    for tid in _token_ids(getattr(model.generation_config, "eos_token_id", None)):
        if tid not in eos:
            eos.append(tid)
    if not eos:
        raise FailedPrecondition(f"model {source.path} has no end-of-turn (eos) token in its tokenizer or generation config")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad_cfg = _token_ids(getattr(model.generation_config, "pad_token_id", None))
        pad = pad_cfg[0] if pad_cfg else eos[0]
    param = next(model.parameters())
    now = time.time()
    return LoadedModel(
        key=key, source=source, model=model, tokenizer=tokenizer, is_default=is_default,
        parameters=count_parameters(model), memory_bytes=model_memory_bytes(model),
        device=str(param.device), dtype=str(param.dtype).removeprefix("torch."),
        eos_ids=tuple(eos), pad_id=int(pad), loaded_at=now, last_used=now,
    )


class ModelRegistry:
    """Resolves model paths and caches loaded models (LRU by count and bytes)."""

    def __init__(self, config: Config, loader: Loader = default_loader):
        self.config = config
        self.loader = loader
        self.max_models = int(config.get("inference.cache_max_models", 4))
        self.max_bytes = int(config.get("inference.cache_max_bytes", 8 * 1024**3))
        if self.max_models < 1:
            raise ValueError("inference.cache_max_models must be >= 1")
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()  # LRU first
        self._loading: dict[str, concurrent.futures.Future] = {}
        self.loads = 0  # loads started (single-flight: one per model however many ask)

    # -- which model a request means ------------------------------------------------------

    @property
    def default_path(self) -> Path:
        return self.config.base_model_path.resolve()

    def default_source(self) -> ModelSource:
        """The configured default model. Raises FailedPrecondition when it is not usable."""
        path = self.default_path
        try:
            return resolve_model_source(path, self.config, field="model.base_model_path", trusted=True)
        except NotFound as exc:
            raise FailedPrecondition(
                f"the default model (config model.base_model_path = {path}) does not exist; "
                "build it with `make model` or name a model_path"
            ) from exc

    def resolve(self, raw: str | None, *, field: str = "model_path") -> ModelSource:
        """The ModelSource a client path names (None or blank: the default model).
        Raises NotFound, PermissionDenied, InvalidArgument or FailedPrecondition."""
        if raw is None or not raw.strip():
            return self.default_source()
        path = resolve_allowed_path(raw, self.config, field=field, must_exist=True)
        return resolve_model_source(path, self.config, field=field)

    def key_of(self, source: ModelSource) -> str:
        return str(source.path.resolve())

    # -- the cache ------------------------------------------------------------------------

    def _use_locked(self, key: str) -> LoadedModel | None:
        """The cached entry for `key`, marked most recently used; None when not cached."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            entry.last_used = time.time()
        return entry

    def cached(self, source: ModelSource) -> LoadedModel | None:
        """The loaded model for `source` if it is in the cache (marked used), else None.
        Never blocks on disk or torch, so the event loop may call it."""
        key = self.key_of(source)
        with self._lock:
            return self._use_locked(key)

    def get(self, source: ModelSource) -> LoadedModel:
        """The loaded model for `source`, loading it (once, however many ask) when needed.
        Blocks. Raises FailedPrecondition when it cannot be loaded."""
        key = self.key_of(source)
        with self._lock:
            entry = self._use_locked(key)
            if entry is not None:
                return entry
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                pending = concurrent.futures.Future()
                self._loading[key] = pending
                self.loads += 1
        if not owner:
            entry = pending.result()
            with self._lock:
                self._use_locked(key)
                entry.last_used = time.time()  # also when it was evicted meanwhile
            return entry
        try:
            entry = self._load(key, source)
        except BaseException as exc:
            with self._lock:
                self._loading.pop(key, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self._entries[key] = entry
            self._loading.pop(key, None)
            evicted = self._evict_locked(keep=key)
        pending.set_result(entry)
        self._free(evicted)
        return entry

    def _load(self, key: str, source: ModelSource) -> LoadedModel:
        started = time.perf_counter()
        is_default = source.path.resolve() == self.default_path
        try:
            model, tokenizer = self.loader(source, self.config)
            entry = describe_model(key, source, model, tokenizer, is_default)
        except ServiceError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise FailedPrecondition(f"cannot load model {source.path}: {exc}") from exc
        log.info("model loaded", extra={
            "model_path": key, "kind": source.kind, "parameters": entry.parameters,
            "memory_bytes": entry.memory_bytes, "seconds": round(time.perf_counter() - started, 3),
        })
        return entry

    def _evict_locked(self, keep: str) -> list[LoadedModel]:
        evicted = []
        while len(self._entries) > 1:
            total = sum(e.memory_bytes for e in self._entries.values())
            if len(self._entries) <= self.max_models and total <= self.max_bytes:
                break
            victim = next((k for k in self._entries if k != keep), None)
            if victim is None:
                break
            evicted.append(self._entries.pop(victim))
        if len(self._entries) == 1 and self._entries[keep].memory_bytes > self.max_bytes:
            log.warning("model is larger than inference.cache_max_bytes; kept because it is in use",
                        extra={"model_path": keep})
        return evicted

    def _free(self, entries: list[LoadedModel]) -> None:
        """Drop the cache's references. Generations still running keep theirs until they end."""
        with self._lock:
            MODEL_CACHE_MODELS.set(len(self._entries))
            MODEL_CACHE_BYTES.set(sum(e.memory_bytes for e in self._entries.values()))
        for entry in entries:
            log.info("model evicted", extra={"model_path": entry.key, "memory_bytes": entry.memory_bytes})
        if entries:
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - freeing memory is best effort
                pass

    def list(self) -> list[LoadedModel]:
        """Loaded models, most recently used first."""
        with self._lock:
            return list(reversed(self._entries.values()))

    def unload(self, raw: str | None) -> tuple[str, int]:
        """Drop a model from the cache; returns (key, bytes freed). `raw` is the path as
        loaded (None or blank: the default model). Raises NotFound when it is not loaded."""
        if raw is None or not raw.strip():
            key = str(self.default_path)
        else:
            with self._lock:
                # A path exactly as ListModels shows it needs no file-system access.
                key = raw if raw in self._entries else None
            if key is None:
                key = str(resolve_allowed_path(raw, self.config, field="model_path"))
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            raise NotFound(f"model_path: {raw or key!r} is not loaded", [("model_path", "not loaded")])
        freed = entry.memory_bytes
        self._free([entry])
        return key, freed
