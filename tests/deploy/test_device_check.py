"""The prepared accelerator check (bench/device_check.sh, bench/device_smoke.py) runs on the CPU
here, so the script a GPU session relies on is known to work up to the device itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.common.config import REPO_ROOT


@pytest.mark.slow
def test_device_smoke_trains_generates_and_scores_on_this_machine(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, "bench/device_smoke.py", "--steps", "2"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_smoke.json").read_text(encoding="utf-8"))
    assert report["ok"] is True and report["device"] == "cpu"
    assert report["train"]["outcome"] == "completed" and report["train"]["steps"] == 2
    assert report["train"]["bf16"] is False  # bf16 only where a CUDA GPU supports it
    assert report["generate"]["tokens"] == 16
    assert report["eval"]["abs_diff"] < 1e-4


def test_device_check_script_is_valid_bash_and_names_its_wheels_from_the_lock():
    script = REPO_ROOT / "bench" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text(encoding="utf-8")
    wheels = text.split('WHEELS="', 1)[1].split('"', 1)[0].split()
    lock = (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8").lower().replace("_", "-")
    for name in wheels:
        assert f"\n{name}==" in "\n" + lock, f"{name} is not pinned in requirements.lock"
