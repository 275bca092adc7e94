"""`wintrain train …`: start, list, inspect, watch, cancel and resume training tasks."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from cli.client import (EXIT_CANCELLED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError,
                        Clients)
from cli.output import Output, fmt_duration, fmt_num, to_dict
from wintrain.train.v1 import train_pb2

STRATEGIES = {"lora": train_pb2.STRATEGY_LORA, "trl": train_pb2.STRATEGY_TRL, "dpo": train_pb2.STRATEGY_DPO}
TERMINAL = {train_pb2.TASK_STATUS_COMPLETED, train_pb2.TASK_STATUS_FAILED,
            train_pb2.TASK_STATUS_CANCELLED, train_pb2.TASK_STATUS_INTERRUPTED}
EXIT_BY_STATUS = {
    train_pb2.TASK_STATUS_COMPLETED: EXIT_OK,
    train_pb2.TASK_STATUS_FAILED: EXIT_ERROR,
    train_pb2.TASK_STATUS_CANCELLED: EXIT_CANCELLED,
    train_pb2.TASK_STATUS_INTERRUPTED: EXIT_INTERRUPTED,
}
STATUS_STYLE = {"pending": "yellow", "running": "cyan", "completed": "green", "failed": "red",
                "cancelled": "magenta", "interrupted": "magenta"}
WATCH_RECONNECTS = 20


# What a DPO run logs besides its loss (TRL's names), shown by --follow and the summary.
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def dpo_numbers(metrics) -> str:
    """`  reward acc 0.75 margin 0.12 (chosen 0.05 rejected -0.07)` when DPO numbers are known."""
    if "rewards/accuracies" not in metrics:
        return ""
    text = f"  reward acc {metrics['rewards/accuracies']:.2f}"
    if "rewards/margins" in metrics:
        text += f" margin {fmt_num(metrics['rewards/margins'])}"
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        text += f" (chosen {fmt_num(metrics['rewards/chosen'])} rejected {fmt_num(metrics['rewards/rejected'])})"
    return text


def status_word(value: int) -> str:
    """`TASK_STATUS_RUNNING` -> `running` (the HTTP API's word)."""
    name = train_pb2.TaskStatus.Name(value)
    return name.removeprefix("TASK_STATUS_").lower()


def strategy_word(value: int) -> str:
    return train_pb2.Strategy.Name(value).removeprefix("STRATEGY_").lower()


# -- --set key=value ---------------------------------------------------------------------------

def _scalar(raw: str) -> Any:
    """A value as JSON, else as a YAML scalar/flow collection, else the raw text."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


_INT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
              FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


def _coerce(key: str, fd: FieldDescriptor, value: Any) -> Any:
    """Fit a parsed value to the field's type (`1e-4` is a string to YAML, `16` a number)."""
    def one(v: Any) -> Any:
        try:
            if fd.type in _FLOAT_TYPES and isinstance(v, str):
                return float(v)
            if fd.type in _INT_TYPES:
                if isinstance(v, str):
                    return int(v)
                if isinstance(v, float) and v.is_integer():
                    return int(v)
            if fd.type == FieldDescriptor.TYPE_STRING and isinstance(v, (int, float, bool)):
                return json.dumps(v) if isinstance(v, bool) else str(v)
        except ValueError:
            kind = "a number" if fd.type in _FLOAT_TYPES else "an integer"
            raise CliError(f"--set {key}: expected {kind}, got {v!r}", EXIT_USAGE) from None
        return v

    if fd.is_repeated and fd.message_type is None:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            value = [value]
        return [one(v) for v in value]
    return one(value)


def apply_sets(message, assignments: list[str]) -> None:
    """Set fields of `message` (a TrainingConfig) from `key=value` items; dotted keys reach
    sub-messages (`lora_config.r=16`), repeated fields take `a,b` or `[a, b]`.
    Raises CliError (exit 2) naming the bad key."""
    tree: dict[str, Any] = {}
    root = message.DESCRIPTOR
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=1e-4", EXIT_USAGE)
        desc, node = root, tree
        parts = key.split(".")
        for i, part in enumerate(parts):
            fd = desc.fields_by_name.get(part)
            if fd is None:
                known = ", ".join(sorted(desc.fields_by_name))
                raise CliError(f"--set {key}: {desc.name} has no field {part!r} (known: {known})", EXIT_USAGE)
            last = i == len(parts) - 1
            if not last:
                if fd.message_type is None or fd.is_repeated:
                    raise CliError(f"--set {key}: {part} has no sub-fields", EXIT_USAGE)
                desc = fd.message_type
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise CliError(f"--set {key}: {part} was already set as a whole", EXIT_USAGE)
                node = child
                continue
            value = _scalar(raw)
            if fd.message_type is not None and not isinstance(value, dict):
                raise CliError(f"--set {key}: {part} is a group of settings; set its fields "
                               f"({part}.<name>=…) or give a mapping like {part}={{r: 16}}", EXIT_USAGE)
            node[part] = value if fd.message_type is not None else _coerce(key, fd, value)
    try:
        json_format.ParseDict(tree, message)
    except json_format.ParseError as exc:
        raise CliError(f"--set: {exc}", EXIT_USAGE) from None


# -- commands ----------------------------------------------------------------------------------

def cmd_start(args, clients: Clients, out: Output) -> int:
    request = train_pb2.StartTrainingRequest(strategy=STRATEGIES[args.strategy], dataset_path=args.data,
                                             output_dir=args.out)
    request.config.SetInParent()
    apply_sets(request.config, args.set or [])
    if args.model:
        request.config.model_path = args.model
    if args.eval_data:
        request.eval_dataset_path = args.eval_data
    response = clients.call("train", "StartTraining", request)
    if out.json:
        out.data(response, compact=args.follow)
    else:
        out.print(f"[green]task {response.task_id}[/] {status_word(response.status)} "
                  f"(queue position {response.queue_position}) {response.message}")
        if not args.follow:
            out.print(f"watch it with: wintrain train watch {response.task_id}")
    if args.follow:
        return watch(clients, out, response.task_id)
    return EXIT_OK


def _list_all(clients: Clients, limit: int) -> list:
    tasks: list = []
    token = ""
    while len(tasks) < limit:
        page = clients.call("train", "ListTrainingTasks", train_pb2.ListTrainingTasksRequest(
            page_size=min(1000, limit - len(tasks)), page_token=token))
        tasks.extend(page.tasks)
        token = page.next_page_token
        if not token:
            break
    return tasks[:limit]


def cmd_list(args, clients: Clients, out: Output) -> int:
    tasks = _list_all(clients, args.limit)
    if out.json:
        out.data({"tasks": [to_dict(t) for t in tasks]})
        return EXIT_OK
    if not tasks:
        out.print("no training tasks yet (start one with `wintrain train start …`)")
        return EXIT_OK
    table = Table(title="Training tasks (newest first)")
    for column in ("task id", "status", "strategy", "progress", "step", "loss", "created", "output"):
        table.add_column(column, no_wrap=column in ("task id", "status"))
    for t in tasks:
        word = status_word(t.status)
        table.add_row(t.task_id, f"[{STATUS_STYLE.get(word, 'white')}]{word}[/]", strategy_word(t.strategy),
                      f"{t.progress:.0f}%", f"{t.current_step}/{t.total_steps}",
                      fmt_num(t.loss) if t.loss else "-", t.created_at[:19], t.output_dir)
    out.print(table)
    return EXIT_OK


def render_task(task, out: Output) -> None:
    word = status_word(task.status)
    table = Table(show_header=False, title=f"Task {task.task_id}")
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("status", f"[{STATUS_STYLE.get(word, 'white')}]{word}[/]"),
        ("message", task.message),
        ("strategy", strategy_word(task.strategy)),
        ("dataset", task.dataset_path),
        ("eval dataset", task.eval_dataset_path),
        ("output", task.output_dir),
        ("progress", f"{task.progress:.1f}%  step {task.current_step}/{task.total_steps}"),
        ("loss", fmt_num(task.loss) if task.loss else "-"),
        ("learning rate", fmt_num(task.learning_rate) if task.learning_rate else "-"),
        ("epoch", f"{task.epoch:.2f}"),
        ("tokens/s", f"{task.tokens_per_second:.0f}" if task.tokens_per_second else "-"),
        ("eta", fmt_duration(task.eta_seconds)),
        ("created", task.created_at), ("started", task.started_at), ("ended", task.completed_at),
        ("last checkpoint", task.last_checkpoint),
        ("error", f"[red]{task.error_message}[/]" if task.error_message else ""),
    ]
    if task.status == train_pb2.TASK_STATUS_PENDING:
        rows.append(("queue position", str(task.queue_position)))
    for name, value in sorted(task.metrics.items()):
        rows.append((f"metric {name}", fmt_num(value)))
    for name, value in rows:
        if value:
            table.add_row(name, value)
    out.print(table)


def cmd_status(args, clients: Clients, out: Output) -> int:
    task = clients.call("train", "GetTrainingStatus", train_pb2.GetTrainingStatusRequest(task_id=args.task_id))
    if out.json:
        out.data(task)
    else:
        render_task(task, out)
    return EXIT_OK


def cmd_watch(args, clients: Clients, out: Output) -> int:
    return watch(clients, out, args.task_id)


def cmd_cancel(args, clients: Clients, out: Output) -> int:
    task = clients.call("train", "CancelTraining", train_pb2.CancelTrainingRequest(task_id=args.task_id))
    if out.json:
        out.data(task)
    else:
        out.print(f"task {task.task_id}: {status_word(task.status)} {task.message}".rstrip())
    return EXIT_OK


def cmd_resume(args, clients: Clients, out: Output) -> int:
    task = clients.call("train", "ResumeTraining",
                        train_pb2.ResumeTrainingRequest(task_id=args.task_id, checkpoint=args.checkpoint or ""))
    if out.json:
        out.data(task, compact=args.follow)
    else:
        out.print(f"task {task.task_id}: {status_word(task.status)} {task.message}".rstrip())
    if args.follow:
        return watch(clients, out, task.task_id)
    return EXIT_OK


# -- watching ----------------------------------------------------------------------------------

class _StepColumn(ProgressColumn):
    """`step 3/16`; `starting` while the task's total is not known yet (never `0/1`)."""

    def render(self, task) -> Text:
        if task.total is None:
            return Text("starting", style="dim")
        return Text(f"step {task.completed:.0f}/{task.total:.0f}")


class _Display:
    """A live rich progress bar on a terminal; one plain line per event elsewhere (logs, CI).

    The bar line holds what changes every step (status, bar, step, loss, lr, tok/s, ETA, eval
    loss) and fits 120 columns; messages (queued, checkpoint saved, failed because …) are
    printed above it as lines of their own. A status event carries no numbers, so the last
    known ones stay on show. On Ctrl-C the bar is stopped before anything else is printed."""

    def __init__(self, out: Output, task_id: str):
        self.out = out
        self.task_id = task_id
        self.live = out.console.is_terminal and not out.json
        self.progress: Progress | None = None
        self.bar = None
        self.last_line = ""
        self.last_message = ""
        self.known: dict[str, Any] = {}

    def __enter__(self) -> "_Display":
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[status]:<9}"),
                BarColumn(bar_width=24),
                _StepColumn(),
                TextColumn("{task.fields[numbers]}"),
                console=self.out.console, transient=False, refresh_per_second=8,
            )
            self.progress.start()
            self.bar = self.progress.add_task(self.task_id, total=None, status="waiting", numbers="")
        return self

    def stop(self) -> None:
        """Stop redrawing (idempotent); the last drawn line stays."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __exit__(self, *exc) -> None:
        self.stop()

    def _remember(self, event) -> dict[str, Any]:
        known = self.known
        for name in ("current_step", "total_steps", "loss", "learning_rate", "tokens_per_second"):
            value = getattr(event, name)
            if value:
                known[name] = value
        known["eta_seconds"] = 0 if event.status in TERMINAL else (event.eta_seconds or known.get("eta_seconds", 0))
        for name in ("eval_loss", *DPO_METRICS):
            if name in event.metrics:
                known[name] = event.metrics[name]
        return known

    def update(self, event) -> None:
        if self.out.json:
            self.out.data(event, compact=True)
            return
        word = status_word(event.status)
        known = self._remember(event)
        loss = fmt_num(known["loss"]) if known.get("loss") else "-"
        lr = fmt_num(known["learning_rate"], 3) if known.get("learning_rate") else "-"
        tps = f"{known['tokens_per_second']:.0f}" if known.get("tokens_per_second") else "-"
        eta = fmt_duration(known.get("eta_seconds", 0))
        numbers = f"loss {loss}  lr {lr}  {tps} tok/s  ETA {eta}"
        if "eval_loss" in known:
            numbers += f"  eval_loss {fmt_num(known['eval_loss'])}"
        numbers += dpo_numbers(known)
        message = event.message if event.message != self.last_message else ""
        self.last_message = event.message or self.last_message
        if self.progress is not None:
            total = known.get("total_steps")
            self.progress.update(self.bar, total=total or None, completed=min(known.get("current_step", 0), total or 0),
                                 status=word, numbers=numbers)
            if message:
                self.progress.console.print(f"{word}: {message}", markup=False, highlight=False)
            return
        step = f"step {known.get('current_step', 0)}/{known['total_steps']}" if known.get("total_steps") else "starting"
        line = f"{word:<9} {step}  {numbers}  {message}".rstrip()
        if line != self.last_line:
            self.out.console.print(line, markup=False)
            self.last_line = line


def watch(clients: Clients, out: Output, task_id: str) -> int:
    """Follow a task until it ends; the exit code is its outcome (see cli.client)."""
    last_seq = 0
    last_event = None
    reconnects = 0
    with _Display(out, task_id) as display:
        while True:
            call = clients.stream("train", "WatchTraining",
                                  train_pb2.WatchTrainingRequest(task_id=task_id, from_sequence=last_seq))
            try:
                for event in call:
                    reconnects = 0
                    if event.sequence:
                        last_seq = max(last_seq, event.sequence)
                    last_event = event
                    display.update(event)
                break
            except KeyboardInterrupt:
                call.cancel()
                display.stop()  # before the message: no progress line redrawn under it
                out.note(f"stopped watching; task {task_id} goes on "
                         f"(`wintrain train watch {task_id}` to follow it again)")
                return EXIT_CANCELLED
            except grpc.RpcError as exc:
                error = clients.error("train", exc)
                # A restarting service ends streams with UNAVAILABLE: pick up where we were.
                if error.code == "UNAVAILABLE" and reconnects < WATCH_RECONNECTS:
                    reconnects += 1
                    time.sleep(min(0.5 * reconnects, 3.0))
                    continue
                raise error from None
    task = clients.call("train", "GetTrainingStatus", train_pb2.GetTrainingStatusRequest(task_id=task_id))
    if task.status not in TERMINAL and last_event is not None and last_event.status in TERMINAL:
        status = last_event.status
    else:
        status = task.status
    if status not in TERMINAL:
        raise CliError(f"the watch of task {task_id} ended while it is {status_word(status)}")
    word = status_word(status)
    if out.json:
        out.data({"task": to_dict(task), "exit_code": EXIT_BY_STATUS[status]}, compact=True)
    else:
        style = STATUS_STYLE.get(word, "white")
        summary = f"[{style}]task {task_id} {word}[/]"
        if task.loss:
            summary += f"  final loss {fmt_num(task.loss)}"
        if "eval_loss" in task.metrics:
            summary += f"  eval_loss {fmt_num(task.metrics['eval_loss'])}"
        summary += dpo_numbers(task.metrics)
        if status == train_pb2.TASK_STATUS_COMPLETED:
            summary += f"  → {task.output_dir}"
        out.print(summary)
        if task.error_message:
            out.note(f"error: {task.error_message}")
    return EXIT_BY_STATUS[status]
