"""`loss.png`: training loss (and eval loss when there is one) against the step."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable

from services.common.fsutil import atomic_write_bytes


def read_log(path: Path) -> list[dict[str, Any]]:
    """Entries of a training_log.jsonl, skipping a torn last line."""
    entries = []
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def dedupe_log(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (kind, step), the latest; a resumed run logs again the steps after its
    checkpoint, and those later lines are the ones that led to the final model."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in entries:
        latest[(str(entry.get("kind", "train")), int(entry.get("step", 0)))] = entry
    order = {"train": 0, "eval": 1, "summary": 2}
    return sorted(latest.values(), key=lambda e: (int(e.get("step", 0)), order.get(str(e.get("kind")), 3)))


def plot_losses(entries: list[dict[str, Any]], out: Path, title: str = "") -> bool:
    """Draw loss (and eval_loss) against step into `out` (PNG, written atomically).
    Returns False when there is nothing to draw."""
    train = [(e["step"], e["loss"]) for e in entries if e.get("kind") == "train" and "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in entries if e.get("kind") == "eval" and "eval_loss" in e]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="loss", color="tab:blue")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], label="eval_loss", color="tab:orange", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
    return True
