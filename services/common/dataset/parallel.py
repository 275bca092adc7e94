"""Worker processes over byte ranges of a large JSONL file, and their scratch folders.

A worker is `python -m <module> --worker <payload as JSON>`; it asks for a parent-death signal
first thing and pickles its result into the run's scratch folder. Nothing depends on a shared
PYTHONHASHSEED (duplicate keys are stable content hashes, see dedupe). Plain Python, no grpc."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from services.common.errors import Cancelled


def default_workers() -> int:
    """Worker processes for a large JSONL file: the CPUs this process may use, at most 4.
    (On 2 idle cores, 2 workers validate a 340 MB file 1.8x faster than one process; on cores
    already busy with other work they gain nothing, and `workers=1` keeps it in-process.)"""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def plan_ranges(path: Path, size: int, workers: int) -> list[tuple[int, int | None]]:
    """Byte ranges of a JSONL file for `workers` processes, each starting at a line start;
    one range `(0, None)` when the file is small or one worker is asked for."""
    if workers <= 1 or size < PARALLEL_MIN_BYTES:
        return [(0, None)]
    n = min(workers, max(2, size // (PARALLEL_MIN_BYTES // 4)))  # ranges of 8 MiB at least
    bounds = [0]
    with open(path, "rb") as f:
        for k in range(1, n):
            pos = size * k // n
            f.seek(pos)
            while True:  # the next line start, reading in bounded chunks
                chunk = f.read(1 << 16)
                if not chunk:
                    pos = size
                    break
                newline = chunk.find(b"\n")
                if newline >= 0:
                    pos += newline + 1
                    break
                pos += len(chunk)
            if bounds[-1] < pos < size:
                bounds.append(pos)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def scratch_prefix(kind: str) -> str:
    """Prefix of a scratch folder in TMPDIR that names its owner: `wintrain-<kind>-<pid>-`."""
    return f"wintrain-{kind}-{os.getpid()}-"


_SCRATCH = re.compile(r"wintrain-(?:process|validate|dups|dupcheck)-(\d+)-")


def clean_stale_scratch(folder: str | None = None) -> list[str]:
    """Remove scratch folders (`wintrain-process-<pid>-*`, ...) in `folder` (TMPDIR) whose
    owning process is dead, as a kill -9 leaves them; returns the paths removed."""
    import shutil

    folder = folder or tempfile.gettempdir()
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _SCRATCH.match(entry)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path = os.path.join(folder, entry)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# Parallel runs at a time in this process; a run that finds none free works in-process.
PARALLEL_SLOTS = threading.BoundedSemaphore(1)
PARALLEL_MIN_BYTES = 32 << 20


def run_workers(module: str, payloads: list[dict], workdir: str,
                should_stop: Callable[[], bool] | None, pass_fds: tuple[int, ...] = ()) -> list:
    """Run `python -m <module> --worker <payload as JSON>` once per payload, all at once, and
    return their results in payload order; each worker pickles its result to
    `payload["result"]` in `workdir`. Each worker asks for a parent-death signal first thing
    (not in a preexec_fn, unsafe in a threaded server), so a killed service leaves none behind. Raises Cancelled (workers killed) when `should_stop()` turns true,
    RuntimeError when a worker fails."""
    repo = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = []
    try:
        for k, payload in enumerate(payloads):
            payload = dict(payload, result=os.path.join(workdir, f"result-{k}.pickle"),
                           parent_pid=os.getpid())
            payloads[k] = payload
            err = open(os.path.join(workdir, f"stderr-{k}.txt"), "wb")
            proc = subprocess.Popen([sys.executable, "-m", module, "--worker", json.dumps(payload)],
                                    cwd=repo, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, pass_fds=pass_fds)
            err.close()
            procs.append(proc)
        while any(p.poll() is None for p in procs):
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            time.sleep(0.05)
        for k, proc in enumerate(procs):
            if proc.returncode != 0:
                with open(os.path.join(workdir, f"stderr-{k}.txt"), "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{module} worker {k} failed ({proc.returncode}): {tail}")
        results = []
        for payload in payloads:
            with open(payload["result"], "rb") as f:
                results.append(pickle.load(f))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
