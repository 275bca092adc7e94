"""The dashboard in headless Chromium against the real gateway, train and inference services:
- it fits 1024, 1400 and 1920 px wide: no sideways scroll, every panel's content inside the
  panel, the task table whole (screenshots in artifacts/dashboard-<width>.png);
- the start form logs often enough that a 30-step run draws at least 20 points;
- a chat that outgrows the model's context drops its oldest turns, says so, and answers."""

from __future__ import annotations

import httpx
import pytest

from services.common.config import REPO_ROOT
from tests.ui.test_dashboard import CHROMIUM, CHROMIUM_ARGS, dashboard, pytestmark, sync_playwright  # noqa: F401

ARTIFACTS = REPO_ROOT / "artifacts"

# Every element of every panel, and the page itself, within bounds (1 px of rounding).
OVERFLOW_JS = """() => {
  const out = [];
  const se = document.scrollingElement;
  if (se.scrollWidth > window.innerWidth) out.push(`page scrolls sideways: ${se.scrollWidth} > ${window.innerWidth}`);
  for (const panel of document.querySelectorAll('.panel')) {
    const p = panel.getBoundingClientRect();
    for (const child of panel.querySelectorAll('*')) {
      const r = child.getBoundingClientRect();
      if (!r.width || !r.height || child.closest('details:not([open])') && child.tagName !== 'SUMMARY') continue;
      if (r.left < p.left - 1 || r.right > p.right + 1)
        out.push(`${panel.id}: <${child.tagName.toLowerCase()} id=${child.id} class=${child.className}> `
                 + `spans ${Math.round(r.left)}..${Math.round(r.right)}, panel ${Math.round(p.left)}..${Math.round(p.right)}`);
    }
  }
  const wrap = document.querySelector('#tasks-panel .table-wrap');
  if (wrap.scrollWidth > wrap.clientWidth) out.push(`task table ${wrap.scrollWidth} px in a ${wrap.clientWidth} px column`);
  for (const cell of document.querySelectorAll('#task-list td, #task-list th'))
    if (cell.scrollWidth > cell.clientWidth + 1) out.push(`clipped cell: ${cell.textContent}`);
  return out;
}"""


def _small_run(url: str, out: str) -> str:
    started = httpx.post(url + "/api/train/start", json={
        "strategy": "lora", "dataset_path": "datasets/train_sample.jsonl", "output_dir": out,
        "config": {"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2, "max_length": 64,
                   "gradient_accumulation_steps": 1, "warmup_steps": 0, "lora_config": {"r": 4}}}, timeout=30)
    assert started.status_code == 200, started.text
    return started.json()["task_id"]


def test_dashboard_fits_each_width_logs_20_points_and_trims_a_full_chat(dashboard):
    from transformers import AutoTokenizer

    url, ws = dashboard
    task_id = _small_run(url, "out/layout")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/ui/")
            page.wait_for_selector(f'#task-list tr[data-task-id="{task_id}"]', timeout=20_000)
            page.click("#start-form summary")
            for width in (1024, 1400, 1920):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(300)
                shot = ARTIFACTS / f"dashboard-{width}.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                problems = page.evaluate(OVERFLOW_JS)
                assert not problems, f"at {width} px: {problems}"

            # the form picks the logging interval: 30 steps -> every step, at least 20 points
            page.set_viewport_size({"width": 1400, "height": 900})
            assert page.input_value("#train-form [name=max_steps]") == "30"
            assert page.input_value("#train-form [name=logging_steps]") == "1"
            page.fill("#train-form [name=max_steps]", "100")
            assert page.input_value("#train-form [name=logging_steps]") == "5"
            page.fill("#train-form [name=max_steps]", "30")
            page.fill("#train-form [name=dataset_path]", "datasets/train_sample.jsonl")
            page.fill("#train-form [name=output_dir]", "out/form30")
            page.fill("#train-form [name=learning_rate]", "0.003")
            page.click("#train-form button[type=submit]")
            page.wait_for_function("document.querySelector('#train-form-result').textContent.startsWith('task ')",
                                   timeout=30_000)
            page.wait_for_function("document.querySelector('#watch-state').textContent.includes('ended')",
                                   timeout=420_000)
            points = int(page.eval_on_selector("#loss-chart", "c => c.dataset.trainPoints"))
            assert points >= 20, f"a 30-step run drew {points} points"
            page.screenshot(path=str(ARTIFACTS / "dashboard-30-steps.png"), full_page=True)

            # a chat that outgrows the context: the oldest turn goes, the chat says so, it answers
            tokenizer = AutoTokenizer.from_pretrained(ws / "models" / "tiny-chat")
            words = "the quick brown fox jumps over the lazy dog and runs far away "
            long_text = words
            while len(tokenizer(long_text)["input_ids"]) < 600:
                long_text += words
            page.fill("#chat-max-tokens", "8")
            page.fill("#chat-temperature", "0")
            for n, text in enumerate((long_text, "and again: " + long_text), start=1):
                page.fill("#chat-input", text)
                page.click("#chat-send")
                page.wait_for_function(f"document.querySelectorAll('#chat-log .msg.assistant[data-done]').length >= {n}",
                                       timeout=120_000)
            answers = page.query_selector_all("#chat-log .msg.assistant")
            assert answers[-1].get_attribute("data-done") in ("stop", "length"), answers[-1].inner_text()
            note = page.query_selector("#chat-log .msg.notice[data-trimmed]")
            assert note is not None, page.inner_text("#chat-log")
            assert int(note.get_attribute("data-trimmed")) == 2  # the first question and its answer
            assert "model's context of 1024 tokens" in note.inner_text()
            # the trimmed conversation goes on: a short follow-up needs no new trimming
            page.fill("#chat-input", "thanks")
            page.click("#chat-send")
            page.wait_for_function("document.querySelectorAll('#chat-log .msg.assistant[data-done]').length >= 3",
                                   timeout=120_000)
            assert page.query_selector_all("#chat-log .msg.assistant")[-1].get_attribute("data-done") != "error"
            assert len(page.query_selector_all("#chat-log .msg.notice")) == 1
            page.screenshot(path=str(ARTIFACTS / "dashboard-chat-trimmed.png"), full_page=True)
            problems = page.evaluate(OVERFLOW_JS)
            assert not problems, problems
            assert not errors, errors
        finally:
            browser.close()
