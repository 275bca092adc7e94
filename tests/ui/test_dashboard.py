"""The dashboard in headless Chromium (Debian's `chromium`, driven by Playwright) against the
real gateway app and the real train and inference services: the page loads, a task started
through the API appears in the list and its loss chart gains points live, and a chat answer
streams in. The screenshot is saved to artifacts/dashboard.png."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time

import httpx
import pytest

from services.common.config import REPO_ROOT
from tests.support import InProcessServer, make_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACT = REPO_ROOT / "artifacts" / "dashboard.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="the playwright Python package is not installed"),
]


class _Gateway:
    """The real gateway app (`gateway.app.create_app`) served by uvicorn in a thread."""

    def __init__(self, config):
        import uvicorn

        from gateway.app import create_app

        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=0, log_config=None,
                                                    access_log=False, lifespan="on", ws="none"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def dashboard(tmp_path, tiny_model_dir):
    """(gateway URL, workspace) with the train and inference services behind the gateway."""
    from services.inference.server import register as inference_register
    from services.train.server import register as train_register

    ws = tmp_path / "ws"
    model = ws / "models" / "tiny-chat"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(REPO_ROOT / "services" / "common" / "assets" / "datasets", ws / "datasets")
    config = make_config(ws, model)
    with contextlib.ExitStack() as stack:
        train = stack.enter_context(InProcessServer(config, "train", train_register))
        inference = stack.enter_context(InProcessServer(config, "inference", inference_register))
        gateway_config = config.with_overrides({"services.train.port": train.port,
                                                "services.inference.port": inference.port})
        url = stack.enter_context(_Gateway(gateway_config))
        yield url, ws


def test_dashboard_lists_tasks_draws_live_loss_and_streams_chat(dashboard):
    url, ws = dashboard
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/ui/")
            assert page.title() == "Win-Train dashboard"
            page.wait_for_selector("#health.badge:not(:empty)")

            # a task started through the API appears in the list
            started = httpx.post(url + "/api/train/start", json={
                "strategy": "lora", "dataset_path": "datasets/bilingual_chat.jsonl", "output_dir": "out/ui",
                "eval_dataset_path": "datasets/train_sample.jsonl",
                "config": {"max_steps": 8, "logging_steps": 1, "eval_steps": 4, "per_device_train_batch_size": 2,
                           "gradient_accumulation_steps": 1, "max_length": 64, "warmup_steps": 0,
                           "lora_config": {"r": 4}}}, timeout=30)
            assert started.status_code == 200, started.text
            task_id = started.json()["task_id"]
            row = page.wait_for_selector(f'#task-list tr[data-task-id="{task_id}"]', timeout=20_000)

            # its chart gains points live from the SSE watch (train loss and eval loss)
            row.click()
            page.wait_for_function("document.querySelector('#loss-chart').dataset.trainPoints >= 1", timeout=180_000)
            first = int(page.eval_on_selector("#loss-chart", "c => c.dataset.trainPoints"))
            page.wait_for_function(
                f"document.querySelector('#loss-chart').dataset.trainPoints > {first} || "
                "document.querySelector('#watch-state').textContent.includes('ended')", timeout=180_000)
            page.wait_for_function("document.querySelector('#watch-state').textContent.includes('ended')",
                                   timeout=180_000)
            points = int(page.eval_on_selector("#loss-chart", "c => c.dataset.trainPoints"))
            eval_points = int(page.eval_on_selector("#loss-chart", "c => c.dataset.evalPoints"))
            assert points == 8, "one point per logged step"
            assert eval_points >= 1, "eval loss is drawn too"
            page.wait_for_selector(f'#task-list tr[data-task-id="{task_id}"][data-status="completed"]',
                                   timeout=20_000)
            chart_pixels = page.evaluate("""() => {
                const c = document.querySelector('#loss-chart');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let blue = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 80) blue++;
                return blue; }""")
            assert chart_pixels > 50, "the train loss line is drawn"

            # a chat answer streams in, piece by piece, from a model named by path
            page.fill("#chat-model", "out/ui")  # the LoRA adapter just trained
            page.fill("#chat-max-tokens", "24")
            page.fill("#chat-temperature", "1.0")
            page.fill("#chat-input", "What is machine learning?")
            page.click("#chat-send")
            answer = page.wait_for_selector("#chat-log .msg.assistant[data-done]", timeout=120_000)
            assert answer.get_attribute("data-done") in ("stop", "length"), answer.inner_text()
            assert answer.eval_on_selector(".text", "n => n.textContent.length") > 0
            assert int(answer.get_attribute("data-pieces")) >= 2, "tokens arrive one event at a time"

            ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)
            assert ARTIFACT.stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()
