"""`make demo` / `python -m cli.demo [--quick]`: the whole life of a fine-tuned model, through
the HTTP gateway only, on the bundled bilingual dataset.

1. validate, then process and split the dataset (train/val/test)
2. LoRA training with a live progress bar from the SSE watch stream
3. evaluation of the base model and the tuned adapter, side by side
4. a streamed chat answer from the tuned model, then batch answers
5. ONNX export of the tuned model with its parity numbers
6. a summary table

When no gateway answers, it starts everything itself (`services.common.launcher`) and stops it
at the end. It exits 1 if any step fails (later steps that need it are skipped), so it doubles as
a smoke test; `--quick` (few steps, short answers) is what CI runs.
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

DATASET_NAME = "bilingual_chat.jsonl"
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
    max_length: int
    eval_samples: int
    chat_tokens: int
    batch_tokens: int
    batch_prompts: int


FULL = Profile(max_steps=60, logging_steps=2, eval_steps=10, batch_size=4, learning_rate=2e-3, max_length=256,
               eval_samples=48, chat_tokens=80, batch_tokens=40, batch_prompts=4)
QUICK = Profile(max_steps=4, logging_steps=1, eval_steps=2, batch_size=2, learning_rate=2e-3, max_length=128,
                eval_samples=6, chat_tokens=12, batch_tokens=8, batch_prompts=2)


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
        from tools.tiny_model import build_tiny_model

        build_tiny_model(config.base_model_path)


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

class Demo:
    def __init__(self, gw: HttpClient, config: Config, profile: Profile, console: Console, run_dir: str):
        self.gw, self.config, self.p, self.console = gw, config, profile, console
        self.state = DemoState(run_dir=run_dir)
        self.results: list[StepResult] = []

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
            "input_file": dataset, "output_dir": out_dir, "format_type": "conversations",
            "split_config": {"train_ratio": 0.8, "val_ratio": 0.1, "test_ratio": 0.1, "shuffle": True, "seed": 42}})
        d = body["data"]
        self.state.facts.update(data_dir=out_dir, train=f"{out_dir}/train.json", val=f"{out_dir}/val.json",
                                test=f"{out_dir}/test.json")
        test_rows = self.config.workspace / out_dir / "test.json"
        self.state.facts["questions"] = _user_questions(test_rows, 8)
        return (f"{d['total_samples']} rows → train {d['train_samples']} / val {d['val_samples']} / "
                f"test {d['test_samples']} in {out_dir}")

    # 2 -----------------------------------------------------------------------------------------
    def step_train(self) -> str:
        p = self.p
        adapter = f"{self.state.run_dir}/adapter"
        started = self.gw.request("POST", "/api/train/start", json={
            "strategy": "lora", "dataset_path": self.state.facts["train"], "output_dir": adapter,
            "eval_dataset_path": self.state.facts["val"],
            "config": {
                "max_steps": p.max_steps, "per_device_train_batch_size": p.batch_size,
                "gradient_accumulation_steps": 1, "learning_rate": p.learning_rate, "warmup_steps": 1,
                "logging_steps": p.logging_steps, "eval_steps": p.eval_steps, "save_steps": p.max_steps,
                "max_length": p.max_length, "seed": 42,
                "lora_config": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": [
                    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
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

    # 3 -----------------------------------------------------------------------------------------
    def step_eval(self) -> str:
        base = self.ws_path(self.config.base_model_path)
        rows = {}
        for label, model in (("base", base), ("tuned", self.state.facts["adapter"])):
            body = self.gw.envelope("POST", "/api/eval/evaluate", json={
                "model_path": model, "dataset_path": self.state.facts["test"],
                "metrics": ["loss", "perplexity", "accuracy"], "batch_size": 8,
                "max_samples": self.p.eval_samples})
            rows[label] = body["data"]
        table = Table(title="Base vs tuned on the test split")
        table.add_column("metric")
        table.add_column("base", justify="right")
        table.add_column("tuned (LoRA)", justify="right")
        for name in sorted(set(rows["base"]["metrics"]) | set(rows["tuned"]["metrics"])):
            table.add_row(name, f"{rows['base']['metrics'].get(name, float('nan')):.4f}",
                          f"{rows['tuned']['metrics'].get(name, float('nan')):.4f}")
        self.console.print(table)
        self.state.facts["eval"] = rows
        b, t = rows["base"]["metrics"], rows["tuned"]["metrics"]
        return (f"loss {b.get('loss', float('nan')):.3f} → {t.get('loss', float('nan')):.3f}, "
                f"accuracy {b.get('accuracy', float('nan')):.3f} → {t.get('accuracy', float('nan')):.3f} "
                f"({rows['tuned']['total_samples']} samples)")

    # 4 -----------------------------------------------------------------------------------------
    def step_chat(self) -> str:
        question = (self.state.facts.get("questions") or ["你好，请介绍一下你自己。"])[0]
        self.console.print(f"[bold]user>[/] {question}")
        self.console.print("[bold]tuned>[/] ", end="")
        pieces: list[str] = []
        first_at = None
        started = time.perf_counter()
        for event in self.gw.sse("POST", "/api/inference/chat/stream", json={
                "model_path": self.state.facts["adapter"], "messages": [{"role": "user", "content": question}],
                "max_tokens": self.p.chat_tokens, "temperature": 0.7, "top_p": 0.9, "seed": 7}):
            token = event.get("token", "")
            if token:
                first_at = first_at or time.perf_counter()
                pieces.append(token)
                self.console.print(token, end="", markup=False, highlight=False)
        self.console.print()
        if not pieces:
            raise StepFailed("the stream carried no tokens")
        ttft = (first_at - started) if first_at else 0.0
        return f"{len(pieces)} streamed pieces, first after {ttft:.2f}s"

    def step_batch(self) -> str:
        prompts = (self.state.facts.get("questions") or [])[1:1 + self.p.batch_prompts]
        if len(prompts) < self.p.batch_prompts:
            prompts += ["What is LoRA?", "用一句话介绍北京。", "Name a colour.", "你好"][:self.p.batch_prompts - len(prompts)]
        body = self.gw.envelope("POST", "/api/inference/batch", json={
            "model_path": self.state.facts["adapter"], "prompts": prompts, "max_tokens": self.p.batch_tokens,
            "temperature": 0.7, "seed": 7})
        results = body["data"]["results"]
        if len(results) != len(prompts):
            raise StepFailed(f"{len(prompts)} prompts but {len(results)} answers")
        table = Table(title="Batch answers (tuned)", show_lines=True)
        table.add_column("prompt", max_width=40)
        table.add_column("answer", max_width=60)
        for prompt, answer in zip(prompts, results):
            table.add_row(prompt, answer)
        self.console.print(table)
        return f"{len(results)} answers in prompt order"

    # 5 -----------------------------------------------------------------------------------------
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
        self.state.facts["export"] = body
        return (f"{body['file_size'] / 1e6:.1f} MB, max |Δ logit| {parity.get('max_abs_diff', float('nan')):.1e} "
                f"≤ {parity.get('tolerance', float('nan')):.0e}, tokens match")

    # ---------------------------------------------------------------------------------------------
    def run(self) -> bool:
        self.run_step("1. data: validate, process, split", self.step_data)
        self.run_step("2. LoRA training", self.step_train, needs=("1. data: validate, process, split",))
        trained = ("2. LoRA training",)
        self.run_step("3. eval: base vs tuned", self.step_eval, needs=trained)
        self.run_step("4a. chat stream (tuned)", self.step_chat, needs=trained)
        self.run_step("4b. batch answers (tuned)", self.step_batch, needs=trained)
        self.run_step("5. ONNX export + parity", self.step_export, needs=trained)
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


def _user_questions(path: Path, limit: int) -> list[str]:
    """First user messages of a conversations JSONL file (the prompts of the chat steps)."""
    out: list[str] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(out) >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                for message in row.get("conversations", []):
                    if message.get("role") == "user" and message.get("content"):
                        out.append(message["content"])
                        break
    except OSError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few training steps and short answers (CI)")
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
        ok = Demo(gw, config, profile, console, f"demos/{run_name}").run()
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
