"""Checkpoint folders: finding the last one, and loading them without running code from them.

A Trainer checkpoint (`checkpoint-<step>/`) holds the weights (safetensors), the optimizer,
scheduler and RNG states (`*.pt`/`*.pth`, pickles written by `torch.save`) and
`trainer_state.json`, which the Trainer writes last. A client can point a task at any folder
inside the allowed roots, so loading one must never run code from it:

- weights must be safetensors (a folder with `*.bin` weights is refused outright);
- every pickle is opened with torch's weights-only unpickler before training starts (so a
  poisoned file fails the task with a clear message, before anything else reads it);
- the worker also forces `torch.load` to weights-only for the whole run
  (`enforce_weights_only`), whatever a library passes, so nothing can reach the full
  unpickler later.

The first two checks are plain Python (the server uses them); the rest import torch (worker).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")
# The Trainer pickles its TrainingArguments here but never loads them on resume (and with
# `enforce_weights_only` nothing could); it is the one pickle not checked.
NEVER_LOADED = ("training_args.bin",)
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
UNSAFE_WEIGHT_FILES = ("pytorch_model.bin", "adapter_model.bin", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A folder that is not a usable (or not a safe) checkpoint; the message says why."""


def checkpoint_step(folder: Path) -> int | None:
    m = CHECKPOINT_RE.match(folder.name)
    return int(m.group(1)) if m else None


def is_complete(folder: Path) -> bool:
    """True when the Trainer finished writing this checkpoint (its state file is written last)."""
    return (folder / STATE_FILE).is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def list_checkpoints(parent: Path) -> list[Path]:
    """Complete `checkpoint-<step>` folders under `parent`, oldest step first."""
    if not parent.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in parent.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return [p for _, p in sorted(found) if is_complete(p)]


def latest_checkpoint(parent: Path) -> Path | None:
    found = list_checkpoints(parent)
    return found[-1] if found else None


def check_checkpoint_files(folder: Path) -> None:
    """Structural checks, no unpickling: a complete Trainer checkpoint with safetensors
    weights only. Raises CheckpointError."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint (no {STATE_FILE})")
    unsafe = [name for name in UNSAFE_WEIGHT_FILES if (folder / name).exists()]
    unsafe += sorted(p.name for p in folder.glob("pytorch_model-*.bin"))
    if unsafe:
        raise CheckpointError(f"{folder} holds pickled weights ({', '.join(unsafe)}); only safetensors "
                              "weights are loaded")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{folder} has no safetensors weights ({' or '.join(WEIGHT_FILES[:2])})")
    for path in folder.iterdir():
        if path.is_symlink():
            raise CheckpointError(f"{folder} contains a symbolic link ({path.name}); refusing to load it")


def remove_partial_outputs(output_dir: Path) -> None:
    """Temporary siblings a killed worker may have left while saving its output
    (`.<name>.*.tmp`, see `atomic_directory`), and the previous output set aside
    (`.<name>.*.old`) once the new one is in place. Call it only while no worker of a live
    task saves into `output_dir`."""
    if not output_dir.parent.is_dir():
        return
    for leftover in output_dir.parent.glob(f".{output_dir.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    if output_dir.is_dir():  # else the set-aside copy is the only one left: keep it
        for leftover in output_dir.parent.glob(f".{output_dir.name}.*.old"):
            shutil.rmtree(leftover, ignore_errors=True)


# -- worker side (torch) ------------------------------------------------------------------------

def enforce_weights_only() -> None:
    """Make every `torch.load` in this process use the weights-only unpickler, even where a
    caller passes `weights_only=False` (accelerate does, for custom objects). Idempotent.
    (transformers 4.57's Trainer already passes weights_only=True for the optimizer, scheduler
    and scaler, and loads the RNG state with torch's weights-only default plus a numpy
    allowlist; this makes it hold whatever the environment or a library says.)"""
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    import torch

    if getattr(torch.load, "_wintrain_weights_only", False):
        return
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        # Resuming a multi-process CPU run, the Trainer maps the optimizer state onto its
        # device `cpu:<rank>`, a location torch cannot restore to; it is plain "cpu".
        location = kwargs.get("map_location", args[1] if len(args) > 1 else None)
        if (isinstance(location, torch.device) and location.type == "cpu") or (
                isinstance(location, str) and location.startswith("cpu:")):
            if len(args) > 1:
                args = (args[0], "cpu", *args[2:])
            else:
                kwargs["map_location"] = "cpu"
        return original(*args, **kwargs)

    load._wintrain_weights_only = True  # type: ignore[attr-defined]
    load.__wrapped__ = original  # type: ignore[attr-defined]
    load.__doc__ = original.__doc__
    torch.load = load
    import torch.serialization

    torch.serialization.load = load


def verify_checkpoint_pickles(folder: Path) -> list[str]:
    """Open every pickle in the checkpoint with torch's weights-only unpickler (plus the numpy
    types the Trainer's RNG state needs). Returns the files checked. Raises CheckpointError
    naming the first file that holds anything else — without executing it."""
    import pickle

    import numpy as np
    import torch

    check_checkpoint_files(folder)
    np_core = getattr(np, "_core", None) or np.core
    allow = [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    checked = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in PICKLE_SUFFIXES or path.name in NEVER_LOADED:
            continue
        try:
            with torch.serialization.safe_globals(allow):
                torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint file {path.relative_to(folder)} holds objects that are not plain tensors "
                f"and was not loaded (weights-only unpickler: {first[:300]})") from None
        checked.append(str(path.relative_to(folder)))
    return checked
