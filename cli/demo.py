"""`make demo` / `python -m cli.demo [--quick]`: the embedded default model learns new facts,
through the HTTP gateway only, and each step says with numbers what happened.

The bundled ``qa_facts.jsonl`` holds ten invented facts (Zorbia's capital, Tessaly's moons, …)
that the pre-trained tiny model never saw:

1. data: validate and process the facts file
2. the default model is asked every fact question: it does not know them
3. a short LoRA run teaches them (live progress from the SSE watch stream); the adapter
   also trains lm_head (see FULL below)
4. eval: the loss on the facts, base model vs the tuned model, falls
5. chat: the tuned model answers them (one streamed answer, then all of them in a batch)
6. ONNX export of the tuned model; ONNX Runtime, run here on the exported file, answers the
   same questions with the same words
7. a summary table (and with ``--summary-json FILE`` the numbers as JSON)

When no gateway answers, it starts everything itself (`services.common.launcher`) and stops it
at the end. It exits 1 if any step fails or the story is not true (later steps that need it are
skipped), so it doubles as a smoke test; `--quick` (fewer steps and evaluations) is what CI runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

import services  # noqa: F401
from cli.client import CliError, HttpClient
from services.common.config import REPO_ROOT, Config, ConfigError, load_config
from services.common.proc import die_with_parent

DATASET_NAME = "qa_facts.jsonl"
ASSET_DATASETS = REPO_ROOT / "services" / "common" / "assets" / "datasets"


class StepFailed(Exception):
    """A demo step went wrong; the message says how."""


@dataclass
class Profile:
    """How big the demo is."""

    max_steps: int
    logging_steps: int
    eval_steps: int
    batch_size: int
    learning_rate: float
    lora_r: int
    answer_tokens: int


# LoRA (r=16, alpha 32) on the seven projections, with lm_head trained in full next to it
# (`modules_to_save`), the ten facts in one batch, at lr 5e-3 with a cosine schedule. Measured on
# the pre-trained tiny model: over the seven projections alone LoRA stalls at a loss of ~1 and gets
# 2-4 facts word for word (the facts' rare tokens need the output head); with lm_head saved it
# learns all ten in 40 steps (a plain PEFT loop, seeds 0-2: 10/10 each at 40 steps, 10/10/9 at 25,
# 5/4/6 at 15). The base ties lm_head to the input embeddings:
# only the head's copy is trained, chat and eval apply the adapter unmerged, and the export unties
# the head before merging (services.common.modeling.merge_untied).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_SAVED = ["lm_head"]
FULL = Profile(max_steps=40, logging_steps=1, eval_steps=5, batch_size=10, learning_rate=5e-3, lora_r=16,
               answer_tokens=32)
QUICK = Profile(max_steps=40, logging_steps=1, eval_steps=10, batch_size=10, learning_rate=5e-3, lora_r=16,
                answer_tokens=24)


@dataclass
class StepResult:
    name: str
    ok: bool | None = None  # None: skipped
    seconds: float = 0.0
    facts: str = ""


@dataclass
class DemoState:
    run_dir: str
    facts: dict[str, Any] = field(default_factory=dict)


def load_facts(path: Path = ASSET_DATASETS / DATASET_NAME) -> list[tuple[str, str]]:
    """(question, answer) of each bundled fact."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            conv = json.loads(line)["conversations"]
            out.append((conv[0]["content"], conv[1]["content"]))
    return out


# -- starting the services ------------------------------------------------------------------------

def _seed_dataset(config: Config) -> None:
    """The bundled dataset in the workspace (what `make model` seeds), copied if missing."""
    target = config.workspace / "datasets" / DATASET_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(ASSET_DATASETS / DATASET_NAME, tmp)
        os.replace(tmp, target)


def _seed_model(config: Config, console: Console) -> None:
    """The embedded tiny model as the base model (what `make model` builds), if missing."""
    if not (config.base_model_path / "config.json").exists():
        console.print(f"building the embedded tiny model in {config.base_model_path} …")
        from tools.tiny_model import StaleWeights, build_tiny_model

        try:
            build_tiny_model(config.base_model_path)
        except StaleWeights as exc:
            raise StepFailed(str(exc)) from exc


class LocalStack:
    """`python -m services.common.launcher` as a child process, stopped by `stop()`."""

    def __init__(self, gateway: HttpClient, log_dir: Path, console: Console):
        self.gateway, self.log_dir, self.console = gateway, log_dir, console
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / "launcher.log", "ab")  # noqa: SIM115 - lives with the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.common.launcher", "--log-dir", str(self.log_dir),
             "--timeout", str(int(timeout))],
            cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout + 30
        while not self.gateway.healthy():
            if self.proc.poll() is not None:
                raise StepFailed(f"the launcher exited with code {self.proc.returncode}; "
                                 f"see {self.log_dir}/launcher.log")
            if time.monotonic() > deadline:
                raise StepFailed(f"the gateway was not healthy after {timeout:.0f}s; see {self.log_dir}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the demo --------------------------------------------------------------------------------------

STEP_DATA = "1. data: validate, process"
STEP_BASE = "2. default model: does it know the facts?"
STEP_TRAIN = "3. LoRA training"
STEP_EVAL = "4. eval: base vs tuned"
STEP_STREAM = "5a. chat stream (tuned)"
STEP_BATCH = "5b. batch answers (tuned)"
STEP_EXPORT = "6. ONNX export: the same answers"


class Demo:
    def __init__(self, gw: HttpClient, config: Config, profile: Profile, console: Console, run_dir: str):
        self.gw, self.config, self.p, self.console = gw, config, profile, console
        self.state = DemoState(run_dir=run_dir)
        self.results: list[StepResult] = []
        self.facts = load_facts()

    # paths as the services see them (relative to the workspace when inside it)
    def ws_path(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.config.workspace))
        except ValueError:
            return str(path.resolve())

    def run_step(self, name: str, fn: Callable[[], str], needs: tuple[str, ...] = ()) -> bool:
        result = StepResult(name)
        self.results.append(result)
        missing = [n for n in needs if not any(r.name == n and r.ok for r in self.results)]
        if missing:
            result.facts = f"skipped: needs {', '.join(missing)}"
            self.console.print(f"[yellow]○ {name}[/] {result.facts}")
            return False
        self.console.rule(f"[bold]{name}")
        started = time.perf_counter()
        try:
            result.facts = fn()
            result.ok = True
        except StepFailed as exc:
            result.ok, result.facts = False, str(exc)
        except CliError as exc:  # the gateway refused or could not be reached
            result.ok, result.facts = False, exc.line()
        except (KeyError, TypeError, ValueError) as exc:  # an answer without the documented shape
            result.ok, result.facts = False, f"unexpected answer: {type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - started
        mark = "[green]✔[/]" if result.ok else "[red]✘[/]"
        self.console.print(f"{mark} {name} ({result.seconds:.1f}s): {escape(result.facts)}", markup=True)
        return bool(result.ok)

    def answers_table(self, title: str, answers: list[str]) -> int:
        """Print question / expected / answer; return how many answers are word for word right."""
        table = Table(title=title, show_lines=False)
        table.add_column("question", max_width=36)
        table.add_column("the fact", max_width=36)
        table.add_column("answer", max_width=48)
        table.add_column("", justify="center")
        right = 0
        for (question, fact), answer in zip(self.facts, answers):
            ok = answer.strip() == fact
            right += ok
            table.add_row(question, fact, answer, "[green]✔[/]" if ok else "[red]✘[/]")
        self.console.print(table)
        return right

    def ask_all(self, model_path: str | None) -> list[str]:
        body = {"prompts": [q for q, _ in self.facts], "max_tokens": self.p.answer_tokens, "temperature": 0}
        if model_path:
            body["model_path"] = model_path
        results = self.gw.envelope("POST", "/api/inference/batch", json=body)["data"]["results"]
        if len(results) != len(self.facts):
            raise StepFailed(f"{len(self.facts)} prompts but {len(results)} answers")
        return [str(r) for r in results]

    # 1 -----------------------------------------------------------------------------------------
    def step_data(self) -> str:
        dataset = f"datasets/{DATASET_NAME}"
        body = self.gw.envelope("POST", "/api/data/validate", params={"file_path": dataset})
        v = body["data"]
        self.console.print(f"validate {dataset}: {v['total_samples']} rows, {v['valid_samples']} valid, "
                           f"{v['invalid_samples']} invalid")
        if not body["success"]:
            raise StepFailed(f"{dataset} is not valid: {v.get('error_messages', [])[:3]}")
        out_dir = f"{self.state.run_dir}/data"
        body = self.gw.envelope("POST", "/api/data/process", json={
            "input_file": dataset, "output_dir": out_dir, "format_type": "conversations"})
        d = body["data"]
        self.state.facts.update(data=f"{out_dir}/processed.json", facts=len(self.facts))
        return f"{d['total_samples']} facts → {out_dir}/processed.json"

    # 2 -----------------------------------------------------------------------------------------
    def step_base(self) -> str:
        answers = self.ask_all(None)
        known = self.answers_table("The default model, asked the facts", answers)
        self.state.facts.update(base_answers=answers, base_known=known)
        if known * 2 > len(self.facts):
            raise StepFailed(f"the default model already knows {known}/{len(self.facts)} facts: nothing to teach")
        return f"the default model knows {known}/{len(self.facts)} facts"

    # 3 -----------------------------------------------------------------------------------------
    def step_train(self) -> str:
        p = self.p
        adapter = f"{self.state.run_dir}/tuned"
        started = self.gw.request("POST", "/api/train/start", json={
            "strategy": "lora", "dataset_path": self.state.facts["data"], "output_dir": adapter,
            "eval_dataset_path": self.state.facts["data"],
            "config": {
                "max_steps": p.max_steps, "per_device_train_batch_size": p.batch_size,
                "gradient_accumulation_steps": 1, "learning_rate": p.learning_rate, "warmup_steps": 3,
                "lr_scheduler_type": "cosine",
                "logging_steps": p.logging_steps, "eval_steps": p.eval_steps, "save_steps": p.max_steps,
                "max_length": 64, "seed": 42,
                "lora_config": {"r": p.lora_r, "lora_alpha": 2 * p.lora_r, "target_modules": LORA_TARGETS,
                                "modules_to_save": LORA_SAVED, "lora_dropout": 0.0},
            }})
        task_id = started["task_id"]
        self.console.print(f"task {task_id} {started['status']}")
        losses, eval_losses = self.watch(task_id)
        task = self.gw.request("GET", f"/api/train/status/{task_id}")
        if task["status"] != "completed":
            raise StepFailed(f"task {task_id} ended {task['status']}: {task.get('error_message') or task.get('message', '')}")
        self.state.facts.update(adapter=adapter, task_id=task_id, losses=losses, eval_losses=eval_losses)
        text = f"task {task_id} completed {task['current_step']}/{task['total_steps']} steps"
        if losses:
            text += f", loss {losses[0]:.3f} → {losses[-1]:.3f}"
        if eval_losses:
            text += f", eval loss {eval_losses[0]:.3f} → {eval_losses[-1]:.3f}"
        return text

    def watch(self, task_id: str) -> tuple[list[float], list[float]]:
        losses: list[float] = []
        eval_losses: list[float] = []
        live = self.console.is_terminal
        progress = Progress(TextColumn("{task.fields[status]:<9}"), BarColumn(bar_width=30),
                            TextColumn("step {task.completed:.0f}/{task.total:.0f}  loss {task.fields[loss]}  "
                                       "lr {task.fields[lr]}  {task.fields[tps]} tok/s  ETA {task.fields[eta]}  "
                                       "{task.fields[eval]}"),
                            console=self.console, disable=not live)
        with progress:
            bar = progress.add_task("train", total=1, status="pending", loss="-", lr="-", tps="-", eta="-", eval="")
            # replay: every stored event from the task's creation on, none missed.
            for event in self.gw.sse("GET", f"/api/train/watch/{task_id}", params={"replay": "true"}):
                kind = event.get("kind")
                if kind == "progress" and event.get("loss"):
                    losses.append(float(event["loss"]))
                ev = (event.get("metrics") or {}).get("eval_loss")
                if kind == "eval" and ev is not None:
                    eval_losses.append(float(ev))
                total = max(int(event.get("total_steps") or 0), 1)
                fields = dict(status=event.get("status", "?"),
                              loss=f"{float(event.get('loss') or 0):.4f}" if event.get("loss") else "-",
                              lr=f"{float(event.get('learning_rate') or 0):.2e}" if event.get("learning_rate") else "-",
                              tps=f"{float(event.get('tokens_per_second') or 0):.0f}",
                              eta=f"{float(event.get('eta_seconds') or 0):.0f}s",
                              eval=f"eval_loss {float(ev):.4f}" if ev is not None else "")
                progress.update(bar, total=total, completed=min(int(event.get("current_step") or 0), total), **fields)
                if not live and kind in ("progress", "eval", "status", "snapshot"):
                    self.console.print(f"  {fields['status']:<9} step {event.get('current_step', 0)}/{total}  "
                                       f"loss {fields['loss']}  lr {fields['lr']}  {fields['tps']} tok/s  "
                                       f"ETA {fields['eta']}  {fields['eval']}".rstrip(), markup=False)
        return losses, eval_losses

    # 4 -----------------------------------------------------------------------------------------
    def step_eval(self) -> str:
        base = self.ws_path(self.config.base_model_path)
        rows = {}
        for label, model in (("base", base), ("tuned", self.state.facts["adapter"])):
            body = self.gw.envelope("POST", "/api/eval/evaluate", json={
                "model_path": model, "dataset_path": self.state.facts["data"],
                "metrics": ["loss", "perplexity", "accuracy"], "batch_size": 10})
            rows[label] = body["data"]
        table = Table(title="Base vs tuned on the facts")
        table.add_column("metric")
        table.add_column("base", justify="right")
        table.add_column("tuned (LoRA)", justify="right")
        for name in sorted(set(rows["base"]["metrics"]) | set(rows["tuned"]["metrics"])):
            table.add_row(name, f"{rows['base']['metrics'].get(name, float('nan')):.4f}",
                          f"{rows['tuned']['metrics'].get(name, float('nan')):.4f}")
        self.console.print(table)
        b, t = rows["base"]["metrics"], rows["tuned"]["metrics"]
        self.state.facts.update(eval_base=b, eval_tuned=t)
        if not t.get("loss", float("inf")) < b.get("loss", float("nan")):
            raise StepFailed(f"the eval loss did not fall: {b.get('loss')} → {t.get('loss')}")
        return (f"loss {b['loss']:.3f} → {t['loss']:.3f}, "
                f"accuracy {b.get('accuracy', float('nan')):.3f} → {t.get('accuracy', float('nan')):.3f} "
                f"({rows['tuned']['total_samples']} samples)")

    # 5 -----------------------------------------------------------------------------------------
    def step_chat(self) -> str:
        question, fact = self.facts[0]
        self.console.print(f"[bold]user>[/] {escape(question)}")
        self.console.print("[bold]tuned>[/] ", end="")
        pieces: list[str] = []
        first_at = None
        started = time.perf_counter()
        for event in self.gw.sse("POST", "/api/inference/chat/stream", json={
                "model_path": self.state.facts["adapter"], "messages": [{"role": "user", "content": question}],
                "max_tokens": self.p.answer_tokens, "temperature": 0}):
            token = event.get("token", "")
            if token:
                first_at = first_at or time.perf_counter()
                pieces.append(token)
                self.console.print(token, end="", markup=False, highlight=False)
        self.console.print()
        if not pieces:
            raise StepFailed("the stream carried no tokens")
        answer = "".join(pieces)
        self.state.facts.update(stream_answer=answer)
        ttft = (first_at - started) if first_at else 0.0
        verdict = "the fact, word for word" if answer.strip() == fact else f"not the fact ({fact!r})"
        return f"{len(pieces)} streamed pieces, first after {ttft:.2f}s: {verdict}"

    def step_batch(self) -> str:
        answers = self.ask_all(self.state.facts["adapter"])
        known = self.answers_table("The tuned model, asked the facts", answers)
        self.state.facts.update(tuned_answers=answers, tuned_known=known)
        base = self.state.facts.get("base_known", 0)
        if known <= base:
            raise StepFailed(f"the tuned model knows {known}/{len(self.facts)} facts, the default {base}: "
                             "the run taught nothing")
        return f"the tuned model knows {known}/{len(self.facts)} facts (the default model: {base})"

    # 6 -----------------------------------------------------------------------------------------
    def step_export(self) -> str:
        out = f"{self.state.run_dir}/onnx"
        body = self.gw.request("POST", "/api/export/onnx", json={
            "model_path": self.state.facts["adapter"], "output_path": out, "export_format": "onnx",
            "opset_version": 14})
        if not body.get("success"):
            raise StepFailed(f"export failed: {body.get('message')}")
        parity = body.get("parity") or {}
        self.console.print(f"exported to {body['export_path']} ({body['file_size'] / 1e6:.1f} MB); parity: "
                           f"max |Δ logit| {parity.get('max_abs_diff', float('nan')):.2e} "
                           f"(tolerance {parity.get('tolerance', float('nan')):.0e}), greedy tokens "
                           f"{'match' if parity.get('tokens_match') else 'DIFFER'} on "
                           f"{parity.get('prompts_checked', 0)} prompts")
        if not parity.get("tokens_match"):
            raise StepFailed("greedy tokens of the ONNX model differ from PyTorch's")
        answers = self.onnx_answers(self.config.workspace / body["export_path"])
        tuned = self.state.facts.get("tuned_answers") or []
        known = self.answers_table("ONNX Runtime on the exported file, asked the facts", answers)
        same = sum(a.strip() == b.strip() for a, b in zip(answers, tuned))
        self.state.facts.update(onnx_answers=answers, onnx_known=known, onnx_same=same,
                                max_abs_diff=parity.get("max_abs_diff"))
        if tuned and same != len(tuned):
            raise StepFailed(f"ONNX Runtime answers {len(tuned) - same} of the {len(tuned)} questions differently")
        return (f"{body['file_size'] / 1e6:.1f} MB, max |Δ logit| {parity.get('max_abs_diff', float('nan')):.1e}; "
                f"ONNX Runtime answers {same}/{len(answers)} questions as the tuned model did ({known} facts right)")

    def onnx_answers(self, export: Path) -> list[str]:
        """Greedy answers of the exported graph, run here with ONNX Runtime (this needs the
        workspace on this machine, as with `make demo`)."""
        from transformers import AutoTokenizer

        from services.export.parity import OrtKVDecoder

        model_file = export if export.suffix == ".onnx" else export / "model.onnx"
        if not model_file.is_file():
            raise StepFailed(f"{model_file} is not on this machine: the ONNX answers are computed next to the workspace")
        tok = AutoTokenizer.from_pretrained(model_file.parent)
        decoder = OrtKVDecoder(model_file)
        answers = []
        for question, _ in self.facts:
            prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=True)
            ids = decoder.greedy(list(prompt), self.p.answer_tokens, eos_ids=[tok.eos_token_id])
            answers.append(tok.decode(ids, skip_special_tokens=True))
        return answers

    # ---------------------------------------------------------------------------------------------
    def run(self) -> bool:
        self.run_step(STEP_DATA, self.step_data)
        self.run_step(STEP_BASE, self.step_base, needs=(STEP_DATA,))
        self.run_step(STEP_TRAIN, self.step_train, needs=(STEP_DATA,))
        trained = (STEP_TRAIN,)
        self.run_step(STEP_EVAL, self.step_eval, needs=trained)
        self.run_step(STEP_STREAM, self.step_chat, needs=trained)
        self.run_step(STEP_BATCH, self.step_batch, needs=trained)
        self.run_step(STEP_EXPORT, self.step_export, needs=trained)
        self.summary()
        return all(r.ok for r in self.results)

    def summary(self) -> None:
        table = Table(title=f"Win-Train demo summary ({self.state.run_dir})")
        table.add_column("step")
        table.add_column("result")
        table.add_column("time", justify="right")
        table.add_column("details", overflow="fold")
        for r in self.results:
            word = "[green]ok[/]" if r.ok else ("[yellow]skipped[/]" if r.ok is None else "[red]FAILED[/]")
            table.add_row(r.name, word, f"{r.seconds:.1f}s", r.facts)
        self.console.print(table)

    def numbers(self) -> dict[str, Any]:
        """What the steps measured, for --summary-json."""
        keep = ("facts", "base_known", "tuned_known", "onnx_known", "onnx_same", "losses", "eval_losses",
                "eval_base", "eval_tuned", "max_abs_diff", "base_answers", "tuned_answers", "onnx_answers",
                "stream_answer", "task_id")
        out = {k: self.state.facts[k] for k in keep if k in self.state.facts}
        out["steps"] = {r.name: {"ok": r.ok, "seconds": round(r.seconds, 2), "details": r.facts} for r in self.results}
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps and evaluations (CI)")
    parser.add_argument("--summary-json", type=Path, metavar="FILE", help="also write the measured numbers there")
    parser.add_argument("--url", help="gateway URL (default: from the configuration, api.host/api.port)")
    parser.add_argument("--config", metavar="FILE", help="configuration file")
    parser.add_argument("--no-start", action="store_true", help="fail instead of starting the services")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for the services")
    parser.add_argument("--run-name", help="folder under <workspace>/demos/ (default: demo-<time>)")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        console.print(f"demo: {exc}", markup=False)
        return 2
    if args.config:
        os.environ["WINTRAIN_CONFIG"] = os.path.abspath(args.config)
    gw = HttpClient(config, args.url)
    url = gw.base_url
    run_name = args.run_name or time.strftime("demo-%Y%m%d-%H%M%S")
    stack: LocalStack | None = None
    started = time.perf_counter()
    try:
        _seed_dataset(config)
        if gw.healthy():
            console.print(f"using the running gateway at {url}")
        elif args.no_start:
            console.print(f"[red]no healthy gateway at {url}[/] (start it with `make run`)")
            return 1
        else:
            console.print(f"no gateway at {url}: starting Win-Train (logs in {config.workspace}/logs/{run_name}) …")
            _seed_model(config, console)
            stack = LocalStack(gw, config.workspace / "logs" / run_name, console)
            stack.start(args.start_timeout)
            console.print(f"Win-Train is up ({time.perf_counter() - started:.0f}s)")
        profile = QUICK if args.quick else FULL
        demo = Demo(gw, config, profile, console, f"demos/{run_name}")
        ok = demo.run()
        if args.summary_json:
            args.summary_json.write_text(json.dumps(demo.numbers(), ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")
    except (StepFailed, CliError) as exc:
        console.print(f"[red]demo: {escape(exc.line() if isinstance(exc, CliError) else str(exc))}[/]")
        ok = False
    except KeyboardInterrupt:
        console.print("[red]demo interrupted[/]")
        return 130
    finally:
        gw.close()
        if stack is not None:
            console.print("stopping the services this demo started …")
            stack.stop()
    console.print(f"{'[green]demo passed' if ok else '[red]demo FAILED'}[/] in {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
