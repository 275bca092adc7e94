"""`make demo` in reduced form, with real processes on free ports: `python -m cli.demo --quick`
on a fresh workspace starts Win-Train itself, runs the whole lifecycle through the gateway and
tells a true story, asserted here with its numbers (the default model does not know the bundled
facts, a short LoRA run teaches them, chat answers them, the eval loss falls, the ONNX export
answers the same), passes and stops what it started; then `wintrain up` starts everything again, `wintrain status`
sees it all healthy, and stopping `wintrain up` leaves no process behind."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from services.common.config import REPO_ROOT, SERVICE_NAMES
from tests.cli.conftest import WINTRAIN
from tests.support import free_port, service_env, tail_logs, wait_for_line

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def default_ports_taken():
    """Listeners on every default port of config.yaml (gRPC, gateway, metrics), as a Win-Train
    already running on this machine would hold them: the test must not need any of them."""
    from contextlib import ExitStack

    from services.common.config import load_config

    defaults = load_config(env={})
    ports = [defaults.get("api.port")]
    for name in SERVICE_NAMES:
        ports += [defaults.get(f"services.{name}.port"), defaults.get(f"services.{name}.metrics_port")]
    with ExitStack() as stack:
        for port in filter(None, ports):
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", int(port)))
                sock.listen(1)
            except OSError:
                pass  # held by something else already, which serves the purpose as well
        yield


@pytest.mark.usefixtures("default_ports_taken")
def test_quick_demo_starts_everything_itself_then_wintrain_up_and_status(tmp_path, tiny_model_dir):
    ws = tmp_path / "ws"
    model = ws / "models" / "tiny-chat"
    shutil.copytree(tiny_model_dir, model)  # the dataset is seeded by the demo itself
    ports = {name: free_port() for name in SERVICE_NAMES}
    overrides = {f"services.{name}.port": port for name, port in ports.items()}
    # Hermetic: a Win-Train on the default ports (metrics 9101-9105 included) must not matter.
    metrics_ports = {f"{name} metrics": free_port() for name in SERVICE_NAMES}
    overrides.update({f"services.{name.split()[0]}.metrics_port": port for name, port in metrics_ports.items()})
    overrides.update({"api.port": free_port(), "storage.workspace": str(ws), "storage.allowed_roots": [str(ws)],
                      "model.base_model_path": str(model), "inference.auto_load": False,
                      "server.grace_seconds": 3})
    env = service_env(overrides)
    env["COLUMNS"] = "160"

    # 1. a fresh machine: no gateway answers, so the demo starts Win-Train, runs, and stops it
    summary = tmp_path / "summary.json"
    demo = subprocess.run([sys.executable, "-m", "cli.demo", "--quick", "--run-name", "ci", "--summary-json", str(summary)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output + tail_logs(ws / "logs" / "ci")
    assert "starting Win-Train" in output and "demo passed" in output
    for step in ("data", "does it know the facts", "LoRA training", "eval: base vs tuned", "chat stream",
                 "batch answers", "ONNX export"):
        assert step in output, step
    assert "FAILED" not in output and "skipped" not in output
    # The story, in numbers.
    facts = [json.loads(line)["conversations"] for line in
             (REPO_ROOT / "services/common/assets/datasets/qa_facts.jsonl").read_text().splitlines()]
    answers = [conv[1]["content"] for conv in facts]
    numbers = json.loads(summary.read_text())
    assert numbers["facts"] == len(facts) == 10
    assert all(r["ok"] for r in numbers["steps"].values())
    # 1. the default model does not know the facts: not one answer is the fact
    assert numbers["base_known"] == 0
    assert sum(a.strip() == f for a, f in zip(numbers["base_answers"], answers)) == 0
    # 2. the short LoRA run learns: its training loss falls far
    losses = numbers["losses"]
    assert len(losses) >= 10 and losses[-1] < 0.5 * losses[0], losses
    # 3. chat answers the facts, word for word, in the stream and in the batch
    assert numbers["tuned_known"] == 10, numbers["tuned_answers"]
    assert sum(a.strip() == f for a, f in zip(numbers["tuned_answers"], answers)) == numbers["tuned_known"]
    assert numbers["stream_answer"].strip() == numbers["tuned_answers"][0].strip()
    # 4. the eval loss on the facts falls (the eval service: base vs adapter)
    assert numbers["eval_tuned"]["loss"] < 0.5 * numbers["eval_base"]["loss"], (numbers["eval_base"], numbers["eval_tuned"])
    assert numbers["eval_losses"] and numbers["eval_losses"][-1] < numbers["eval_losses"][0]
    # 5. ONNX Runtime on the exported file answers the same
    assert numbers["onnx_answers"] == numbers["tuned_answers"] or [a.strip() for a in numbers["onnx_answers"]] == [
        a.strip() for a in numbers["tuned_answers"]]
    assert numbers["onnx_same"] == 10 and numbers["onnx_known"] == numbers["tuned_known"]
    demo_dir = ws / "demos" / "ci"
    assert (demo_dir / "data" / "processed.json").is_file()
    # the tuned model is a LoRA adapter (lm_head trained next to it), not a full copy of the weights
    assert (demo_dir / "tuned" / "adapter_model.safetensors").is_file()
    assert not (demo_dir / "tuned" / "model.safetensors").exists()
    assert json.loads((demo_dir / "tuned" / "adapter_config.json").read_text())["modules_to_save"] == ["lm_head"]
    assert any((demo_dir / "onnx").rglob("*.onnx"))
    still_up = [name for name, port in [*ports.items(), *metrics_ports.items(), ("gateway", overrides["api.port"])]
                if _listening(port)]
    assert not still_up, f"the demo left these running: {still_up}"

    # 2. `wintrain up` (what `make run` does), `wintrain status`, and a clean stop
    log_dir = tmp_path / "logs"
    up = subprocess.Popen([str(WINTRAIN), "up", "--log-dir", str(log_dir), "--timeout", "240"], cwd=REPO_ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = wait_for_line(up, "Win-Train is up", 300)
        assert any("Win-Train is up" in line for line in lines), "".join(lines) + tail_logs(log_dir)

        status = subprocess.run([str(WINTRAIN), "status", "--json"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        body = json.loads(status.stdout)
        assert body["healthy"] is True and body["gateway"]["status"] == "SERVING"
        assert all(s["status"] == "SERVING" for s in body["services"].values())
        # the tasks the demo ran are still known to the restarted train service
        listed = subprocess.run([str(WINTRAIN), "train", "list", "--json"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert listed.returncode == 0
        assert [t["status"] for t in json.loads(listed.stdout)["tasks"]] == ["completed"]

        children = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    finally:
        if up.poll() is None:
            for child in psutil.Process(up.pid).children(recursive=True):
                child.kill()
            up.kill()
            up.wait()
