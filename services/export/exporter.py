"""The export domain: load (and merge) a model, write it in a deployable format into a
temporary folder, prove it matches PyTorch, then move it into place.

No grpc here. Inputs are already path-checked (`resolve_allowed_path`) by the servicer.
Raises the canonical errors of `services.common.errors`:
InvalidArgument (bad options), NotFound / FailedPrecondition (not a model), AlreadyExists
(target present without `overwrite`), FailedPrecondition (the exporter failed, or the export
failed its proof: the message carries the numbers), Cancelled.

Atomicity: a folder target is built by `atomic_directory` and replaces the old folder only
after the proof passed. A `.onnx` file target is built in a temporary folder beside it; its
files are then renamed into the target folder, the files they replace being kept aside until
every rename succeeded. Either way a failed export leaves nothing behind and never damages an
existing export.

Layout of a `.onnx` file target (`exports/x.onnx`): the model file stays exactly at
output_path, with its external data (`x.onnx_data`, when written) and int8 model
(`x_int8.onnx`) beside it, and its companions (config.json, generation_config.json, tokenizer
files) loose in the same folder, where ONNX Runtime loaders (optimum's
`ORTModelForCausalLM.from_pretrained(folder, file_name="x.onnx")`) look for them. Several
exports may share one folder only while their companions are identical (e.g. the same model
at different opsets); an export whose companions differ from those of another model in the
folder is refused with ALREADY_EXISTS naming output_path, even with `overwrite` (which only
ever replaces output_path's own export). Give each different model its own folder.
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from services.common.config import Config
from services.common.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
)
from services.common.fsutil import atomic_directory
from services.common.modeling import ModelSource, load_model, load_tokenizer, merge_untied, resolve_model_source
from services.common.paths import display_path
from services.export import onnx_export, parity
from services.export.parity import ParityResult
from services.export.quantize import quantize_int8, quantized_name

log = logging.getLogger("wintrain.export")

FORMATS = ("onnx", "safetensors")
# Formats the original API listed but never produced. A traced TorchScript graph has no KV
# cache interface either; refusing is better than writing something nobody can generate with.
NOT_IMPLEMENTED_FORMATS = {"torchscript"}


@dataclass(frozen=True)
class ExportSpec:
    """One export, with resolved paths."""

    model_path: Path
    output_path: Path
    export_format: str = "onnx"
    opset: int = onnx_export.DEFAULT_OPSET
    lora_adapter_path: Path | None = None
    quantize: bool = False
    overwrite: bool = False

    @property
    def file_target(self) -> bool:
        """True when `output_path` names the `.onnx` model file rather than a folder."""
        return is_onnx_file_path(str(self.output_path))

    @property
    def target_dir(self) -> Path:
        return self.output_path.parent if self.file_target else self.output_path


@dataclass
class ExportResult:
    export_path: Path
    export_format: str
    opset: int  # 0 when not ONNX
    files: list[tuple[Path, int]]
    total_size: int
    export_time: float
    parity: ParityResult
    quantized_path: Path | None = None
    quantized_parity: ParityResult | None = None
    quantized_size: int = 0
    message: str = ""


@dataclass
class _Staged:
    """What the build wrote, as names relative to the staging folder."""

    names: list[str] = field(default_factory=list)
    main: str = ""
    quantized: list[str] = field(default_factory=list)


def is_onnx_file_path(raw: str | Path) -> bool:
    """A path whose last component ends in `.onnx` names the model file."""
    return Path(str(raw).strip()).name.lower().endswith(".onnx")


def normalize_format(raw: str | None) -> str:
    return (raw or "onnx").strip().lower()


def validate_options(export_format: str, opset: int, quantize: bool, output_path: str) -> None:
    """Check the non-path options; every wrong field is reported. Raises InvalidArgument."""
    violations: list[tuple[str, str]] = []
    supported = ", ".join(FORMATS)
    if export_format not in FORMATS:
        why = (" (torchscript is not implemented: a traced TorchScript graph has no KV cache"
               " interface to generate with; use onnx)") if export_format in NOT_IMPLEMENTED_FORMATS else ""
        violations.append(("export_format", f"unknown format {export_format!r}; supported formats: {supported}{why}"))
    if export_format == "onnx":
        low, high = onnx_export.supported_opsets()
        if not low <= opset <= high:
            violations.append((
                "opset_version",
                f"{opset} is not supported; use an opset from {low} to {high} (the range the ONNX "
                f"exporter and the installed onnxruntime both support)",
            ))
    if export_format == "safetensors":
        if quantize:
            violations.append(("quantize", "int8 quantization is only available for export_format onnx"))
        if is_onnx_file_path(output_path):
            violations.append(("output_path", "a .onnx path names an ONNX file; a safetensors export needs a folder path"))
    if violations:
        raise InvalidArgument.for_fields(violations)


def _checkpoint(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("export cancelled by the client")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _looks_like_export(folder: Path) -> bool:
    """An empty folder, or one holding a model (what an earlier export wrote)."""
    entries = list(folder.iterdir())
    return not entries or (folder / "config.json").is_file() or any(
        p.suffix in (".onnx", ".safetensors") for p in entries)


def _check_target(spec: ExportSpec, sources: list[Path], config: Config) -> None:
    target = spec.output_path
    shown = display_path(target, config)
    if not spec.file_target:
        for root in [config.workspace, *config.allowed_roots]:
            if _within(root, target):
                raise InvalidArgument.for_field("output_path", f"{shown} is a storage root; name a folder inside it")
        for src in sources:
            # Replacing (or building over) the folder being exported would destroy the source.
            if _within(src, target):
                raise InvalidArgument.for_field(
                    "output_path", f"{shown} would replace the model folder {display_path(src, config)} being exported")
    if target.exists() and not spec.overwrite:
        raise _already_exists(spec, config)
    if target.is_dir() and not _looks_like_export(target):
        # overwrite replaces a whole folder: only ever one that holds a model, never, say, datasets.
        raise FailedPrecondition(
            f"output_path: {shown} exists and does not hold an export (no config.json, .onnx or "
            ".safetensors file); refusing to replace it", [("output_path", "not an export folder")])


def _load_merged(spec: ExportSpec, config: Config):
    """(model, tokenizer) on CPU in fp32 with every adapter merged into the weights."""
    import torch

    source = resolve_model_source(spec.model_path, config, field="model_path",
                                  trusted=spec.model_path == config.base_model_path)
    adapter: ModelSource | None = None
    if spec.lora_adapter_path is not None:
        adapter = resolve_model_source(spec.lora_adapter_path, config, field="lora_adapter_path")
        if adapter.kind != "adapter":
            raise InvalidArgument.for_field(
                "lora_adapter_path", f"{display_path(adapter.path, config)} is a full model, not a LoRA adapter")
    _check_target(spec, [source.path, *([adapter.path] if adapter else [])], config)
    model, tokenizer = load_model(source, config, device="cpu", dtype=torch.float32, merge_adapter=True)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = merge_untied(PeftModel.from_pretrained(model, str(adapter.adapter_path)))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise FailedPrecondition(f"lora_adapter_path: cannot apply {display_path(adapter.path, config)} to "
                                     f"{display_path(source.path, config)}: {exc}",
                                     [("lora_adapter_path", "does not fit the model")]) from exc
        if (adapter.path / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(adapter.path, config)
    model.eval()
    return model, tokenizer, source, adapter


def run_export(spec: ExportSpec, config: Config, cancel: threading.Event | None = None) -> ExportResult:
    """Export, prove, and move into place. See the module docstring for what it raises."""
    started = time.perf_counter()
    _checkpoint(cancel)
    model, tokenizer, source, adapter = _load_merged(spec, config)
    tolerance = float(config.get("export.parity_tolerance", 1e-4))
    new_tokens = int(config.get("export.parity_new_tokens", 16))
    reference = parity.reference_outputs(model, tokenizer, new_tokens=new_tokens)
    _checkpoint(cancel)

    with _stage(spec, config) as staging:
        if spec.export_format == "onnx":
            staged, export_time, proof, qproof = _build_onnx(spec, model, tokenizer, reference, staging, tolerance, cancel)
        else:
            staged, export_time, proof = _build_safetensors(spec, model, tokenizer, reference, staging, tolerance, config)
            qproof = None
        _checkpoint(cancel)

    final_dir = spec.target_dir
    files = [(final_dir / name, (final_dir / name).stat().st_size) for name in staged.names]
    result = ExportResult(
        export_path=spec.output_path,
        export_format=spec.export_format,
        opset=spec.opset if spec.export_format == "onnx" else 0,
        files=files,
        total_size=sum(size for _, size in files),
        export_time=export_time,
        parity=proof,
    )
    if qproof is not None:
        result.quantized_path = final_dir / staged.quantized[0]
        result.quantized_parity = qproof
        result.quantized_size = sum((final_dir / n).stat().st_size for n in staged.quantized)
    what = f"{'merged ' if adapter or source.kind == 'adapter' else ''}model {display_path(source.path, config)}"
    result.message = (
        f"exported {what} as {spec.export_format}"
        + (f" (opset {spec.opset})" if spec.export_format == "onnx" else "")
        + f" to {display_path(spec.output_path, config)} in {export_time:.1f}s; proof: {proof.summary()}"
        + (f"; int8 model: {result.quantized_size} bytes, {qproof.summary(enforced=False)}" if qproof else "")
    )
    log.info("export finished", extra={
        "export_path": str(spec.output_path), "format": spec.export_format, "bytes": result.total_size,
        "max_abs_diff": proof.max_abs_diff, "export_time": round(export_time, 3),
        "total_time": round(time.perf_counter() - started, 3),
    })
    return result


_ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError)
try:
    from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

    _ORT_ERRORS += tuple(
        getattr(_ort_state, name) for name in ("Fail", "InvalidGraph", "InvalidArgument", "RuntimeException",
                                               "NoSuchFile", "InvalidProtobuf", "NotImplemented")
        if hasattr(_ort_state, name)
    )
except ImportError:  # pragma: no cover - onnxruntime is a pinned dependency
    pass


def _prove_onnx(reference, staging: Path, file_name: str, tolerance: float) -> ParityResult:
    try:
        return parity.check_onnx(reference, staging, file_name, tolerance)
    except _ORT_ERRORS as exc:
        raise FailedPrecondition(f"ONNX Runtime cannot run the exported {file_name}: {exc}") from exc


def _build_onnx(spec, model, tokenizer, reference, staging: Path, tolerance: float, cancel):
    model_file = spec.output_path.name if spec.file_target else onnx_export.DEFAULT_MODEL_FILE
    t0 = time.perf_counter()
    onnx_export.export_onnx(model, staging, opset=spec.opset, model_file=model_file)
    tokenizer.save_pretrained(str(staging))
    export_time = time.perf_counter() - t0
    _checkpoint(cancel)
    proof = _prove_onnx(reference, staging, model_file, tolerance)
    if not proof.ok:
        raise FailedPrecondition(f"the ONNX export failed its parity proof (opset {spec.opset}): {proof.summary()}")
    staged = _Staged(main=model_file)
    qproof = None
    if spec.quantize:
        _checkpoint(cancel)
        qname = quantized_name(model_file)
        quantize_int8(staging / model_file, staging / qname)
        # int8 moves logits far beyond the fp32 tolerance: reported, not enforced.
        qproof = _prove_onnx(reference, staging, qname, tolerance)
        staged.quantized = [p.name for p in onnx_export.onnx_files(staging / qname)]
    staged.names = _ordered_names(staging, model_file)
    return staged, export_time, proof, qproof


def _build_safetensors(spec, model, tokenizer, reference, staging: Path, tolerance: float, config: Config):
    t0 = time.perf_counter()
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    export_time = time.perf_counter() - t0
    try:
        proof = parity.check_transformers(reference, staging, tolerance,
                                          trust_remote_code=bool(config.get("model.trust_remote_code", False)))
    except (OSError, ValueError, RuntimeError) as exc:
        raise FailedPrecondition(f"the saved model cannot be reloaded: {exc}") from exc
    if not proof.ok:
        raise FailedPrecondition(f"the safetensors export failed its parity proof: {proof.summary()}")
    return _Staged(names=_ordered_names(staging, ""), main=""), export_time, proof


def _ordered_names(staging: Path, main: str) -> list[str]:
    """Top-level names written, the main model file last (it is renamed into place last, so
    nobody sees the graph before its data and config)."""
    names = sorted(p.name for p in staging.iterdir())
    if main in names:
        names.remove(main)
        names.append(main)
    return names


# -- staging and commit ---------------------------------------------------------------------

@contextlib.contextmanager
def _stage(spec: ExportSpec, config: Config) -> Iterator[Path]:
    if spec.file_target:
        with _stage_beside(spec, config) as tmp:
            yield tmp
        return
    try:
        with atomic_directory(spec.output_path, overwrite=spec.overwrite) as tmp:
            yield tmp
    except FileExistsError as exc:
        raise _already_exists(spec, config) from exc


def _already_exists(spec: ExportSpec, config: Config) -> AlreadyExists:
    return AlreadyExists(f"output_path: {display_path(spec.output_path, config)} already exists; "
                         "set overwrite to replace it", [("output_path", "already exists")])


def _previous_export_names(target: Path) -> list[str]:
    """Files of an earlier export at the `.onnx` target that a new one may not rewrite
    (its external data, its int8 model and that model's data)."""
    names: list[str] = []
    models = [target, target.parent / quantized_name(target.name)]
    for model_file in models:
        if not model_file.is_file():
            continue
        names.append(model_file.name)
        with contextlib.suppress(Exception):  # an unreadable old file is simply replaced
            names.extend(loc for loc in onnx_export.external_data_files(model_file) if "/" not in loc)
    return names


def _other_models(folder: Path, target: Path) -> list[str]:
    """The `.onnx` models in `folder` that are not `target` or its int8 model: other exports
    sharing the folder's companion files."""
    mine = {target.name, quantized_name(target.name)}
    return sorted(p.name for p in folder.glob("*.onnx") if p.name not in mine and not p.name.startswith("."))


@contextlib.contextmanager
def _stage_beside(spec: ExportSpec, config: Config) -> Iterator[Path]:
    folder = spec.target_dir
    folder.mkdir(parents=True, exist_ok=True)
    if spec.output_path.exists() and not spec.overwrite:
        raise _already_exists(spec, config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.output_path.name}.", suffix=".tmp", dir=folder))
    try:
        yield tmp
        _commit_files(tmp, folder, spec, config)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit_files(tmp: Path, folder: Path, spec: ExportSpec, config: Config) -> None:
    names = _ordered_names(tmp, spec.output_path.name)
    if spec.output_path.exists() and not spec.overwrite:
        raise _already_exists(spec, config)
    # Companion files (config, tokenizer) may be shared with other exports in the folder, but
    # only when identical: never silently change the files another model relies on.
    conflicts = [n for n in names if (folder / n).exists()
                 and not ((folder / n).is_file() and filecmp.cmp(tmp / n, folder / n, shallow=False))]
    others = _other_models(folder, spec.output_path)
    if conflicts and others:
        # `overwrite` is about output_path's own files; another model's companions are never replaced.
        raise AlreadyExists(
            f"output_path: {display_path(spec.output_path, config)}: its folder also holds "
            f"{', '.join(others)}, whose {', '.join(conflicts)} differ from this export's; export into "
            "its own folder (a folder output_path, or a .onnx path in another folder)",
            [("output_path", "folder holds another export with different companion files")],
        )
    if conflicts and not spec.overwrite:
        raise AlreadyExists(
            f"output_path: {display_path(folder, config)} already holds different {', '.join(conflicts)}; "
            "set overwrite to replace them",
            [("output_path", "folder holds different files of the same names")],
        )
    replaced = list(dict.fromkeys([*names, *(_previous_export_names(spec.output_path) if spec.overwrite else [])]))
    backup = Path(tempfile.mkdtemp(prefix=f".{spec.output_path.name}.", suffix=".old", dir=folder))
    moved_aside: list[str] = []
    placed: list[str] = []
    try:
        for name in replaced:
            if os.path.lexists(folder / name):
                os.replace(folder / name, backup / name)
                moved_aside.append(name)
        for name in names:
            os.replace(tmp / name, folder / name)
            placed.append(name)
    except BaseException:
        for name in placed:
            with contextlib.suppress(OSError):
                (folder / name).unlink()
        for name in moved_aside:
            os.replace(backup / name, folder / name)
        with contextlib.suppress(OSError):
            backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)
