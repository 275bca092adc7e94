"""The model registry: which model a request means, and an LRU cache of loaded models.

A request names a full model folder, a LoRA adapter folder, or nothing (the configured
default, `model.base_model_path`, a server-side path that is not path-checked). Loaded models
are kept, most recently used first, within `inference.cache_max_models` and
`inference.cache_max_bytes`. Loading is single-flight: two requests for the same unloaded
model wait on one load. Everything here blocks (disk, torch): call it from a worker thread,
never from the event loop.

Many adapters on one base (PEFT multi-adapter): an adapter is never merged. Loading one loads
its base (an entry of its own, listed with its `adapters`), wraps the base module in one
`PeftModel` and adds the adapter with `load_adapter(path, adapter_name=...)`. Every entry of
that base (the base itself as "__base__", each adapter by its PEFT name) then holds the same
`.model`, so the scheduler puts their rows in one batch with `adapter_names=[...]` per row,
and the base weights are held, and counted by the LRU, once: an adapter entry's
`memory_bytes` are its LoRA weights only. Evicting or unloading a base takes its adapters
with it. Forward passes over a shared base and changes to its adapters (load, delete) are
serialized by one lock per base, so an adapter loads while other rows generate (between two
decoding steps). An unloaded adapter's weights are deleted once no request holds it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import gc
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
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
    # Called for full models only: adapters are added to their loaded base (SharedBase).
    return load_model(source, config)


BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


class SharedBase:
    """One loaded base model and the adapters added to it (one copy of the base weights).

    `module` is the plain base model; `peft` the PeftModel around it once an adapter is added
    (None before). `lock` serializes every forward over the base with adapter changes."""

    def __init__(self, key: str, module):
        self.key = key
        self.module = module
        self.peft = None
        self.lock = threading.RLock()
        # adapter key -> PEFT adapter name (loaded entries); replaced, never mutated, so that
        # ListModels may read it while an adapter is added or removed
        self.names: dict[str, str] = {}
        self._names_lock = threading.Lock()
        self._retired: list[str] = []  # PEFT names unloaded, to delete once unused
        self._unused: list[str] = []  # retired names no request holds any more (appended by finalizers)
        self._count = 0
        _serialize_forward(module, self.lock)

    def adapters(self) -> list[str]:
        return sorted(self.names)

    def add(self, key: str, source: ModelSource, config: Config):
        """Add the adapter at `source.adapter_path`; returns (peft model, PEFT name, its LoRA
        bytes, its LoRA parameters)."""
        from peft import PeftModel

        with self.lock:
            self._reap_locked()
            self._count += 1
            name = f"adapter{self._count}"
            current = self.peft if self.peft is not None else self.module
            before, before_params = model_memory_bytes(current), count_parameters(current)
            if self.peft is None:
                try:
                    peft = PeftModel.from_pretrained(self.module, str(source.adapter_path), adapter_name=name)
                except BaseException:
                    _strip_tuner_layers(self.module)  # injected, its weights refused: the plain base again
                    raise
                peft.eval()
                _serialize_forward(peft, self.lock)
                self.peft = peft
            else:
                try:
                    self.peft.load_adapter(str(source.adapter_path), adapter_name=name)
                except BaseException:
                    if name in self.peft.peft_config:  # injected, its weights refused: take it out again
                        self.peft.delete_adapter(name)
                        self.peft.set_adapter(sorted(self.names.values())[0])
                    self._neutral_layers()
                    raise
                self.peft.eval()
            device = next(self.module.parameters()).device
            self.peft.to(device)
            self._neutral_layers()
            with self._names_lock:
                self.names = {**self.names, key: name}
            return (self.peft, name, model_memory_bytes(self.peft) - before,
                    count_parameters(self.peft) - before_params)

    def retire(self, key: str, entry: "LoadedModel") -> None:
        """The adapter's entry left the cache: delete its weights once no request holds it."""
        with self._names_lock:
            names = dict(self.names)
            name = names.pop(key, None)
            if name is None:
                return
            self.names = names
        self._retired.append(name)
        weakref.finalize(entry, self._unused.append, name)

    def reap(self) -> None:
        with self.lock:
            self._reap_locked()

    def _reap_locked(self) -> None:
        for name in [n for n in self._retired if n in self._unused]:
            live = set(self.names.values())
            if not live:
                break  # PEFT cannot drop its last adapter; it goes with the base
            self.peft.delete_adapter(name)
            self.peft.set_adapter(sorted(live)[0])
            self._neutral_layers()
            self._retired.remove(name)
            self._unused.remove(name)

    def _neutral_layers(self) -> None:
        """Make a call without `adapter_names` compute the base alone: rows still generating
        on the plain base module when the first adapter is injected stay exact."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for mod in self.peft.modules():
            if isinstance(mod, BaseTunerLayer):
                mod.set_adapter(BASE_ADAPTER, inference_mode=True)


def _strip_tuner_layers(module) -> None:
    """Put every PEFT layer injected into `module` back to the layer it wraps."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
    if "peft_config" in vars(module):
        del module.peft_config  # set on the base by the tuner; a later wrap starts afresh


def _serialize_forward(module, lock) -> None:
    """Every forward of `module` holds `lock` (re-entrant: a PeftModel calls its base)."""
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with lock:
            return inner(*args, **kwargs)

    module.forward = forward


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
    # PEFT adapter of this entry in the shared `.model` ("__base__": the base itself once an
    # adapter shares it; None: a plain model). The scheduler passes it per row.
    adapter_name: str | None = None
    shared: SharedBase | None = field(default=None, repr=False, compare=False)
    base_entry: "LoadedModel | None" = field(default=None, repr=False, compare=False)  # an adapter's base

    @property
    def adapters(self) -> list[str] | None:
        """Paths of the adapters loaded on this base (None for an adapter)."""
        if self.source.kind == "adapter" or self.shared is None:
            return None
        return self.shared.adapters()

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
            if entry.shared is not None and entry.shared.key != key and entry.shared.key in self._entries:
                self._entries.move_to_end(entry.shared.key)  # an adapter's base is used with it
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
            shared = entry.shared
            if shared is not None and shared.key != key:
                # The adapter's base stays cached with it (it may have been evicted meanwhile).
                base = self._entries.get(shared.key)
                if base is None or base.shared is not shared:
                    self._entries[shared.key] = entry.base_entry
                self._entries.move_to_end(shared.key)
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
            if source.kind == "adapter":
                entry = self._load_adapter(key, source, is_default)
            else:
                model, tokenizer = self.loader(source, self.config)
                entry = describe_model(key, source, model, tokenizer, is_default)
                entry.shared = SharedBase(key, model)
        except ServiceError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise FailedPrecondition(f"cannot load model {source.path}: {exc}") from exc
        log.info("model loaded", extra={
            "model_path": key, "kind": source.kind, "parameters": entry.parameters,
            "memory_bytes": entry.memory_bytes, "seconds": round(time.perf_counter() - started, 3),
        })
        return entry

    def _load_adapter(self, key: str, source: ModelSource, is_default: bool) -> LoadedModel:
        """Add an adapter to its base (loaded first when needed): one copy of the base weights."""
        base_source = ModelSource(path=source.base_path, kind="full", base_path=source.base_path)
        base = self.get(base_source)
        if base.shared is None:  # a loader that returned a model this registry did not wrap
            raise FailedPrecondition(f"cannot load adapter {source.path}: its base is not shareable")
        peft, name, lora_bytes, lora_params = base.shared.add(key, source, self.config)
        tokenizer = base.tokenizer
        if (source.adapter_path / "tokenizer_config.json").is_file():
            from services.common.modeling import load_tokenizer

            tokenizer = load_tokenizer(source.adapter_path, self.config)
        entry = describe_model(key, source, peft, tokenizer, is_default)
        entry.adapter_name, entry.shared, entry.memory_bytes = name, base.shared, lora_bytes
        entry.parameters = lora_params
        with self._lock:
            # The base entry now serves on the shared PeftModel too ("__base__" rows).
            current = self._entries.get(base.key)
            if current is not None and current.shared is base.shared and current.adapter_name is None:
                self._entries[base.key] = current = replace(current, model=peft, adapter_name=BASE_ADAPTER)
            entry.base_entry = current if current is not None and current.shared is base.shared else \
                replace(base, model=peft, adapter_name=BASE_ADAPTER)
        return entry

    def _group_locked(self, key: str) -> list[str]:
        """`key` and, for a base, the keys of its adapters (they go together)."""
        entry = self._entries[key]
        if entry.shared is None or entry.shared.key != key:
            return [key]
        return [key] + [k for k in entry.shared.adapters() if k in self._entries]

    def _pop_locked(self, key: str) -> list[LoadedModel]:
        popped = []
        for k in self._group_locked(key):
            entry = self._entries.pop(k)
            if entry.shared is not None and entry.shared.key != k:
                entry.shared.retire(k, entry)
            popped.append(entry)
        return popped

    def _evict_locked(self, keep: str) -> list[LoadedModel]:
        evicted = []
        kept = self._entries[keep]
        protected = {keep} | ({kept.shared.key} if kept.shared is not None else set())
        while len(self._entries) > 1:
            total = sum(e.memory_bytes for e in self._entries.values())
            if len(self._entries) <= self.max_models and total <= self.max_bytes:
                break
            victim = next((k for k in self._entries if k not in protected), None)
            if victim is None:
                break
            evicted.extend(self._pop_locked(victim))
        if len(self._entries) <= len(protected) and self._entries[keep].memory_bytes > self.max_bytes:
            log.warning("model is larger than inference.cache_max_bytes; kept because it is in use",
                        extra={"model_path": keep})
        return evicted

    def _free(self, entries: list[LoadedModel]) -> None:
        """Drop the cache's references. Generations still running keep theirs until they end;
        an unloaded adapter's weights are deleted once none holds it."""
        with self._lock:
            MODEL_CACHE_MODELS.set(len(self._entries))
            MODEL_CACHE_BYTES.set(sum(e.memory_bytes for e in self._entries.values()))
        for key, size in [(e.key, e.memory_bytes) for e in entries]:
            log.info("model evicted", extra={"model_path": key, "memory_bytes": size})
        groups = {id(e.shared): e.shared for e in entries if e.shared is not None and e.shared.peft is not None}
        had = bool(entries)
        entries.clear()  # the cache's last references: an unused adapter's entry goes now
        if had:
            gc.collect()
            for group in groups.values():
                group.reap()
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
        """Drop a model from the cache (a base with its adapters); returns (key, bytes freed).
        `raw` is the path as loaded (None or blank: the default model). Raises NotFound when it
        is not loaded."""
        if raw is None or not raw.strip():
            key = str(self.default_path)
        else:
            with self._lock:
                # A path exactly as ListModels shows it needs no file-system access.
                key = raw if raw in self._entries else None
            if key is None:
                key = str(resolve_allowed_path(raw, self.config, field="model_path"))
        with self._lock:
            popped = self._pop_locked(key) if key in self._entries else []
        if not popped:
            raise NotFound(f"model_path: {raw or key!r} is not loaded", [("model_path", "not loaded")])
        freed = sum(e.memory_bytes for e in popped)
        self._free(popped)
        return key, freed
