"""Unit tests of checkpoint handling: finding the last complete checkpoint, refusing unsafe
folders, and loading pickles without ever running code from them; plus the training log
helpers that build training_log.jsonl and loss.png."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from services.train import checkpoints
from services.train.plots import dedupe_log, plot_losses, read_log
from tests.support import PYTHON


def make_checkpoint(folder, *, weights="model.safetensors", state=True):
    folder.mkdir(parents=True)
    (folder / weights).write_bytes(b"x")
    if state:
        (folder / "trainer_state.json").write_text("{}")
    return folder


class Evil:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-9")
    make_checkpoint(tmp_path / "checkpoint-10", weights="adapter_model.safetensors")
    make_checkpoint(tmp_path / "checkpoint-12", state=False)  # being written when the worker died
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert checkpoints.latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert checkpoints.latest_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize("breakage, message", [
    ("no_state", "not a training checkpoint"),
    ("bin_weights", "pickled weights"),
    ("no_weights", "no safetensors weights"),
    ("symlink", "symbolic link"),
])
def test_unsafe_or_incomplete_folders_are_refused(tmp_path, breakage, message):
    folder = make_checkpoint(tmp_path / "checkpoint-3", state=breakage != "no_state")
    if breakage == "bin_weights":
        (folder / "pytorch_model.bin").write_bytes(b"x")
    if breakage == "no_weights":
        (folder / "model.safetensors").unlink()
    if breakage == "symlink":
        os.symlink("/etc/passwd", folder / "scheduler.pt")
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.check_checkpoint_files(folder)


def test_pickles_are_opened_weights_only(tmp_path):
    import numpy as np
    import torch

    folder = make_checkpoint(tmp_path / "checkpoint-2")
    torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
               folder / "optimizer.pt")
    torch.save({"python": (3, tuple(range(5)), None), "numpy": np.random.get_state(),
                "cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    torch.save({"anything": Evil(tmp_path / "never")}, folder / "training_args.bin")  # never loaded
    assert checkpoints.verify_checkpoint_pickles(folder) == ["optimizer.pt", "rng_state.pth"]

    sentinel = tmp_path / "pwned"
    torch.save([Evil(sentinel)], folder / "scheduler.pt")
    with pytest.raises(checkpoints.CheckpointError, match="scheduler.pt holds objects that are not plain tensors"):
        checkpoints.verify_checkpoint_pickles(folder)
    assert not sentinel.exists()


def test_enforced_weights_only_holds_against_callers_and_environment(tmp_path):
    # In a fresh process: the patch is process-wide, as in the worker.
    script = textwrap.dedent(f"""
        import os, pickle, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        import torch
        from tests.train.test_checkpoints import Evil
        from services.train.checkpoints import enforce_weights_only
        path = {str(tmp_path / "evil.pt")!r}
        torch.save({{"x": Evil({str(tmp_path / "pwned")!r})}}, path)
        torch.save({{"w": torch.ones(2)}}, {str(tmp_path / "ok.pt")!r})
        enforce_weights_only()
        try:
            torch.load(path, weights_only=False)
        except pickle.UnpicklingError:
            print("refused")
        print(float(torch.load({str(tmp_path / "ok.pt")!r}, map_location=torch.device("cpu", 0))["w"].sum()))
    """)
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["refused", "2.0"]
    assert not (tmp_path / "pwned").exists()


def test_training_log_keeps_the_latest_line_per_step_and_plots(tmp_path):
    log = tmp_path / "training_log.jsonl"
    lines = [
        {"kind": "train", "step": 1, "loss": 3.0}, {"kind": "train", "step": 2, "loss": 2.5},
        {"kind": "train", "step": 3, "loss": 2.4},  # logged, then the worker died
        {"kind": "train", "step": 3, "loss": 2.0},  # resumed from checkpoint-2
        {"kind": "eval", "step": 3, "eval_loss": 2.2}, {"kind": "train", "step": 4, "loss": 1.5},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n{torn", encoding="utf-8")
    entries = dedupe_log(read_log(log))
    assert [(e["kind"], e["step"], e.get("loss", e.get("eval_loss"))) for e in entries] == [
        ("train", 1, 3.0), ("train", 2, 2.5), ("train", 3, 2.0), ("eval", 3, 2.2), ("train", 4, 1.5)]
    assert plot_losses(entries, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_losses([], tmp_path / "empty.png") and not (tmp_path / "empty.png").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
