"""Fault injection on the real data service: kill -9 at chosen points of a ProcessDataset run
over an existing split set. The folder must then hold the complete old set or the complete new
one (never a mix, no row in two splits), and what the killed run left behind is cleaned."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from services.data.processing import SPLIT_FILES, SplitSpec, process_file
from tests.support import free_port, service_env, start_process, wait_for_health, wait_until
from wintrain.data.v1 import data_pb2, data_pb2_grpc

pytestmark = pytest.mark.slow

ROWS = 250_000


def _dataset(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(ROWS):
            f.write(json.dumps({"conversations": [
                {"role": "user", "content": f"question {i} about item {i % 977}"},
                {"role": "assistant", "content": f"answer {i} " + "x" * (i % 40)}]}) + "\n")
    return path


def _split_set(folder: Path) -> dict[str, bytes] | None:
    try:
        return {name: (folder / name).read_bytes() for name in SPLIT_FILES}
    except FileNotFoundError:
        return None


class _Service:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.scratch = tmp / "tmpdir"
        self.scratch.mkdir(exist_ok=True)
        self.proc = None
        self.runs = 0

    def start(self):
        env = service_env({"services.data.port": self.port, "services.data.host": "127.0.0.1",
                           "services.data.metrics_port": free_port(),
                           "storage.workspace": str(self.tmp / "ws"),
                           "storage.allowed_roots": [str(self.tmp)]})
        env["TMPDIR"] = str(self.scratch)
        self.runs += 1
        self.proc = start_process([sys.executable, "-m", "services.data"], env,
                                  self.tmp / f"data-{self.runs}.log")
        wait_for_health(f"127.0.0.1:{self.port}", timeout=90)

    def process(self, src: Path, out: Path, seed: int):
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        stub = data_pb2_grpc.DataServiceStub(channel)
        request = data_pb2.ProcessDatasetRequest(
            input_file=str(src), output_dir=str(out), overwrite=True,
            split_config=data_pb2.SplitConfig(train_ratio=0.8, val_ratio=0.1, test_ratio=0.1,
                                              shuffle=True, seed=seed))
        return channel, stub.ProcessDataset.future(request, timeout=300)

    def kill(self) -> list:
        """kill -9 the service; returns its worker processes still alive 10 s later."""
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        _, alive = psutil.wait_procs(kids, timeout=10)
        return alive


def _wait_for(check, timeout: float) -> bool:
    return wait_until(check, timeout, 0.002)


def _staged(out: Path, name: str | None):
    def check():
        for entry in out.parent.iterdir():
            if entry.name.startswith(f".{out.name}.wintrain-new-"):
                if name is None or (entry / name).exists():
                    return True
        return False
    return check


def test_kill_9_during_process_never_mixes_split_sets(tmp_path):
    src = _dataset(tmp_path / "big.jsonl")
    out = tmp_path / "out"
    # The two complete sets the folder may hold: seed 5 (old) and seed 6 (new).
    process_file(src, tmp_path / "want5", split=SplitSpec(seed=5), workers=1)
    process_file(src, tmp_path / "want6", split=SplitSpec(seed=6), workers=1)
    old, new = _split_set(tmp_path / "want5"), _split_set(tmp_path / "want6")
    assert old != new

    svc = _Service(tmp_path)
    svc.start()
    try:
        channel, call = svc.process(src, out, 5)
        call.result()
        channel.close()
        assert _split_set(out) == old

        points = {
            "pass 1": lambda: _wait_for(lambda: False, 0.4) or True,
            "writing splits": _staged(out, "train.json"),
            "last split file staged": _staged(out, "test.json"),
        }
        seen = []
        for point, reached in points.items():
            stale = svc.scratch / "wintrain-process-999999999-left"
            stale.mkdir(exist_ok=True)  # as a killed parallel pass 1 leaves it (a dead pid)
            channel, call = svc.process(src, out, 6)
            hit = _wait_for(reached, 60)
            assert svc.kill() == [], f"{point}: worker processes outlived the service"
            channel.close()
            got = _split_set(out)
            assert got in (old, new), f"{point}: the folder mixes two split sets"
            rows = [set(got[name].splitlines()) for name in SPLIT_FILES]
            assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2]), point
            seen.append((point, hit, got == new))
            svc.start()  # a restart removes the dead run's scratch folders
            assert not stale.exists(), point
        assert all(hit for _, hit, _ in seen), seen

        # A later run completes, and leaves no staging folder of the killed runs beside out.
        channel, call = svc.process(src, out, 6)
        call.result()
        channel.close()
        assert _split_set(out) == new
        assert [e.name for e in tmp_path.iterdir() if ".wintrain-new-" in e.name] == []
        assert [e.name for e in out.iterdir() if e.name.endswith(".tmp")] == []
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.kill()
