"""`wintrain`: the Win-Train command line. It talks gRPC to the five services; addresses,
TLS and the API key come from the configuration (`--config FILE`, `WINTRAIN_CONFIG`,
`WINTRAIN__SERVICES__TRAIN__PORT=…`, `WINTRAIN_API_KEY`).

Every command takes `--json` for machine-readable output: the proto3 JSON of the answer with
the proto's field names (`wintrain train watch --json` prints one JSON object per event).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import grpc

from cli import chat as chat_cmd
from cli import train as train_cmd
from cli.client import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, Clients, HttpClient
from cli.client import __doc__ as EXIT_CODES_DOC
from cli.output import Output, fmt_bytes, fmt_num
from cli.paths import to_workspace
from services.common.config import SERVICE_NAMES, ConfigError, load_config
from wintrain.data.v1 import data_pb2
from wintrain.eval.v1 import eval_pb2
from wintrain.export.v1 import export_pb2

LONG_DEADLINE = 3600.0
# Arguments that name an existing input (dataset, model, adapter, checkpoint): see cli.paths.
INPUT_PATH_ARGS = ("file", "data", "eval_data", "model", "adapter", "checkpoint")


# -- services and gateway health -----------------------------------------------------------------

def cmd_status(args, clients: Clients, out: Output) -> int:
    from services.common.healthcheck import UNREACHABLE_CODES, probe

    report: dict[str, dict] = {}
    for name in SERVICE_NAMES:
        state = probe(clients.channel(name), timeout=args.timeout or 3)
        if state != "SERVING":  # no replica SERVING: what one says of itself (NOT_SERVING…)
            state = probe(clients.channel(name, health_check=False), timeout=args.timeout or 3)
        report[name] = {"address": clients.address(name),
                        "status": "UNREACHABLE" if state in UNREACHABLE_CODES else state}
    http = HttpClient(clients.config)
    url = http.base_url
    gateway = {"address": url, "status": "UNREACHABLE"}
    try:
        code, body = http.health(timeout=args.timeout or 3)
        gateway["status"] = "SERVING" if code == 200 and body.get("status") == "healthy" \
            else f"HTTP {code} {body.get('status', '')}".strip()
        gateway["health"] = body
    except Exception as exc:  # noqa: BLE001 - any transport failure means "not reachable"
        gateway["error"] = str(exc) or type(exc).__name__
    finally:
        http.close()
    healthy = all(v["status"] == "SERVING" for v in report.values()) and gateway["status"] == "SERVING"
    if out.json:
        out.data({"healthy": healthy, "services": report, "gateway": gateway})
    else:
        from rich.table import Table

        table = Table(title="Win-Train")
        for column in ("component", "address", "status"):
            table.add_column(column)
        rows = [(name, v["address"], v["status"]) for name, v in report.items()]
        rows.append(("gateway", url, gateway["status"]))
        for name, address, state in rows:
            style = "green" if state == "SERVING" else ("yellow" if state == "NOT_SERVING" else "red")
            table.add_row(name, address, f"[{style}]{state}[/]")
        out.print(table)
    return EXIT_OK if healthy else EXIT_ERROR


def cmd_up(args, _clients, _out) -> int:
    from services.common import launcher

    if args.config:
        os.environ["WINTRAIN_CONFIG"] = os.path.abspath(args.config)
    forwarded: list[str] = []
    if args.services:
        forwarded += ["--services", args.services]
    if args.no_gateway:
        forwarded.append("--no-gateway")
    if args.timeout:
        forwarded += ["--timeout", str(args.timeout)]
    if args.log_dir:
        forwarded += ["--log-dir", args.log_dir]
    return launcher.main(forwarded)


# -- data ------------------------------------------------------------------------------------------

def cmd_data_validate(args, clients: Clients, out: Output) -> int:
    resp = clients.call("data", "ValidateDataset", data_pb2.ValidateDatasetRequest(file_path=args.file))
    if out.json:
        out.data(resp)
        return EXIT_OK if resp.is_valid else EXIT_ERROR
    from rich.table import Table

    verdict = "[green]valid[/]" if resp.is_valid else "[red]not valid[/]"
    out.print(f"{args.file}: {verdict}  format {resp.detected_format or '?'}  rows {resp.total_samples}  "
              f"valid {resp.valid_samples}  invalid {resp.invalid_samples}")
    stats = resp.stats
    if resp.valid_samples:
        roles = ", ".join(f"{role} {n}" for role, n in sorted(stats.messages_per_role.items()))
        out.print(f"  messages: {roles}   turns p50 {stats.turns.p50:g} (max {stats.turns.max:g})   "
                  f"chars p50 {stats.chars.p50:g} p90 {stats.chars.p90:g} (max {stats.chars.max:g})   "
                  f"exact duplicates {stats.exact_duplicates}")
    if resp.issues or resp.error_messages:
        table = Table(title="First problems" + (" (more not listed)" if resp.errors_truncated else ""))
        for column in ("line", "field", "code", "message"):
            table.add_column(column)
        if resp.issues:
            for issue in resp.issues:
                table.add_row(str(issue.line), issue.field, issue.code, issue.message)
        else:
            for message in resp.error_messages:
                table.add_row("", "", "", message)
        out.print(table)
    return EXIT_OK if resp.is_valid else EXIT_ERROR


def parse_split(text: str) -> tuple[float, float, float]:
    """`0.8/0.1/0.1` (or `80/10/10`) -> ratios. Raises CliError (usage)."""
    parts = [p for p in text.replace(",", "/").split("/") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values):
        raise CliError(f"--split {text!r}: expected three ratios train/val/test, e.g. 0.8/0.1/0.1", EXIT_USAGE)
    if sum(values) > 1.5:  # percentages
        values = [v / 100 for v in values]
    return values[0], values[1], values[2]


def cmd_data_process(args, clients: Clients, out: Output) -> int:
    request = data_pb2.ProcessDatasetRequest(input_file=args.file, output_dir=args.out, format_type=args.format,
                                             overwrite=args.overwrite)
    if args.split:
        train, val, test = parse_split(args.split)
        request.split_config.train_ratio = train
        request.split_config.val_ratio = val
        request.split_config.test_ratio = test
        request.split_config.shuffle = not args.no_shuffle
        if args.seed is not None:
            request.split_config.seed = args.seed
    resp = clients.call("data", "ProcessDataset", request, timeout=args.timeout or 600)
    if out.json:
        out.data(resp)
        return EXIT_OK
    from rich.table import Table

    out.print(f"[green]processed[/] {args.file} ({resp.detected_format}) → {resp.output_dir}: "
              f"read {resp.total_samples}, kept {resp.kept_samples}, duplicates removed {resp.duplicates_removed}")
    if resp.dropped:
        out.print("  dropped: " + ", ".join(f"{why} {n}" for why, n in sorted(resp.dropped.items())))
    table = Table()
    for column in ("file", "rows", "size"):
        table.add_column(column)
    for f in resp.files:
        table.add_row(f.path, str(f.rows), fmt_bytes(f.size_bytes))
    out.print(table)
    return EXIT_OK


# -- eval / export ------------------------------------------------------------------------------------

def cmd_eval(args, clients: Clients, out: Output) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else []
    request = eval_pb2.EvaluateRequest(model_path=args.model, dataset_path=args.data, metrics=metrics,
                                       max_samples=args.max_samples or 0)
    if args.batch_size is not None:
        request.batch_size = args.batch_size
    if args.adapter:
        request.lora_adapter_path = args.adapter
    if args.max_new_tokens is not None:
        request.max_new_tokens = args.max_new_tokens
    if args.per_sample:
        request.per_sample_path = args.per_sample
    if args.reference:
        request.reference_model_path = args.reference
    if args.beta is not None:
        request.beta = args.beta
    result = _evaluate_streaming(args, clients, out, request)
    if out.json:
        out.data(result)
        return EXIT_OK
    from rich.table import Table

    out.print(f"[bold]Evaluation[/] of {args.model}" + (f" + {args.adapter}" if args.adapter else "")
              + f" on {args.data}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(result.metrics.items()):
        table.add_row(name, fmt_num(value, 5))
    out.print(table)
    line = f"{result.total_samples} samples, {result.tokens_scored} tokens scored in {result.eval_time:.1f}s"
    if result.skipped_samples:
        line += f"; skipped {result.skipped_samples} (" + ", ".join(
            f"{k} {v}" for k, v in sorted(result.skip_reasons.items())) + ")"
    if result.truncated_samples:
        line += f"; truncated {result.truncated_samples}"
    out.print(line)
    for label, path in (("per-sample results", result.per_sample_path), ("evalscope report", result.report_path)):
        if path:
            out.print(f"{label}: {path}")
    return EXIT_OK


def _evaluate_streaming(args, clients: Clients, out: Output, request):
    """EvaluateStream with a progress bar on a terminal; the last event carries the result."""
    timeout = args.timeout or LONG_DEADLINE
    show = out.console.is_terminal and not out.json
    call = clients.stream("eval", "EvaluateStream", request, timeout=timeout)
    result = None
    try:
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=out.console, transient=True) as progress:
                bar = progress.add_task("loading", total=None)
                for event in call:
                    progress.update(bar, description=event.phase, completed=event.samples_done,
                                    total=event.samples_total or None)
                    if event.HasField("result"):
                        result = event.result
        else:
            for event in call:
                if event.HasField("result"):
                    result = event.result
    except KeyboardInterrupt:
        call.cancel()
        raise
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return clients.call("eval", "Evaluate", request, timeout=timeout)
        raise clients.error("eval", exc) from None
    if result is None:
        raise CliError("the evaluation stream ended without a result", EXIT_ERROR, "INTERNAL")
    return result


def cmd_export(args, clients: Clients, out: Output) -> int:
    request = export_pb2.ExportOnnxRequest(model_path=args.model, output_path=args.out, export_format=args.format,
                                           quantize=args.quantize, overwrite=args.overwrite)
    if args.opset is not None:
        request.opset_version = args.opset
    if args.adapter:
        request.lora_adapter_path = args.adapter
    timeout = args.timeout or LONG_DEADLINE
    if out.console.is_terminal and not out.json:
        with out.console.status(f"exporting {args.model} to {args.format} and checking parity…"):
            resp = clients.call("export", "ExportOnnx", request, timeout=timeout)
    else:
        resp = clients.call("export", "ExportOnnx", request, timeout=timeout)
    if out.json:
        out.data(resp)
        return EXIT_OK if resp.success else EXIT_ERROR
    from rich.table import Table

    verdict = "[green]exported[/]" if resp.success else "[red]export failed[/]"
    out.print(f"{verdict} {resp.export_format} (opset {resp.opset_version}) → {resp.export_path}  "
              f"{fmt_bytes(resp.file_size)} in {resp.export_time:.1f}s")
    if resp.message:
        out.print(f"  {resp.message}")
    table = Table(title="Parity with PyTorch")
    for column in ("model", "max |Δ logit|", "tolerance", "greedy tokens", "prompts", "size"):
        table.add_column(column)
    p = resp.parity
    table.add_row("export", f"{p.max_abs_diff:.3g}", f"{p.tolerance:.3g}",
                  "match" if p.tokens_match else f"differ ({p.token_agreement:.0%} agree)",
                  f"{p.prompts_checked}×{p.tokens_per_prompt}", fmt_bytes(resp.file_size))
    if resp.quantized_path:
        q = resp.quantized_parity
        table.add_row("int8", f"{q.max_abs_diff:.3g}", "(reported)", f"{q.token_agreement:.0%} agree",
                      f"{q.prompts_checked}×{q.tokens_per_prompt}", fmt_bytes(resp.quantized_size))
    out.print(table)
    return EXIT_OK if resp.success else EXIT_ERROR


# -- the parser -------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the subcommand it wins, absent it leaves the top-level value.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output (proto3 JSON, proto field names)")
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="configuration file (default: $WINTRAIN_CONFIG or the repository's config.yaml)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="deadline of each call (default: per command)")

    parser = argparse.ArgumentParser(
        prog="wintrain", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Win-Train: fine-tune chat models (gRPC services + HTTP gateway).",
        epilog="Paths: relative to the workspace (storage.workspace, ./var), e.g. datasets/x.jsonl; an input\n"
               "that exists from the current folder inside the workspace (var/datasets/x.jsonl) works too.\n\n"
               "Exit codes:\n" + EXIT_CODES_DOC.split("(also in `wintrain --help`):")[-1])
    # The same options as `common`, with real defaults (own actions: set_defaults on shared
    # parent actions would change the subcommands' defaults too).
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    parser.add_argument("--config", default=None, metavar="FILE", help="configuration file")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="deadline of each call")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(parent, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    # `up` runs the launcher in the foreground; its output is the launcher's plain log lines.
    help_text = "start every service and the gateway (what `make run` does); Ctrl-C stops them"
    p = sub.add_parser("up", help=help_text, description=help_text)
    p.set_defaults(handler=cmd_up)
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help="configuration file")
    p.add_argument("--services", help="comma-separated services to start (default: all)")
    p.add_argument("--no-gateway", action="store_true", help="do not start the HTTP gateway")
    p.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                   help="seconds to wait for every service to be SERVING (default 180)")
    p.add_argument("--log-dir", help="write each process's log to DIR/<name>.log")
    add(sub, "status", cmd_status, "health of every service and of the gateway")

    data = sub.add_parser("data", help="check and prepare datasets").add_subparsers(
        dest="data_command", metavar="ACTION", required=True)
    p = add(data, "validate", cmd_data_validate, "check every row of a dataset; report the first problems")
    p.add_argument("file", help="dataset file: relative to the workspace, or an existing path from here "
                                "inside it (var/datasets/x.jsonl)")
    p = add(data, "process", cmd_data_process, "normalise, de-duplicate and split a dataset")
    p.add_argument("file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--split", nargs="?", const="0.8/0.1/0.1", metavar="TRAIN/VAL/TEST",
                   help="write train/val/test.json with these ratios (bare --split: 0.8/0.1/0.1); "
                        "without it one processed.json")
    p.add_argument("--format", default="auto", help="conversations, sharegpt, openai, alpaca or auto (default)")
    p.add_argument("--seed", type=int, help="shuffle seed (default 42)")
    p.add_argument("--no-shuffle", action="store_true", help="split in file order")
    p.add_argument("--overwrite", action="store_true", help="replace files in --out that are not ours")

    train = sub.add_parser("train", help="training tasks").add_subparsers(
        dest="train_command", metavar="ACTION", required=True)
    p = add(train, "start", train_cmd.cmd_start, "queue a training task")
    p.add_argument("--strategy", choices=sorted(train_cmd.STRATEGIES), default="lora")
    p.add_argument("--data", required=True, metavar="FILE", help="training dataset")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the model or adapter")
    p.add_argument("--eval-data", metavar="FILE", help="evaluation dataset, scored every eval_steps")
    p.add_argument("--model", metavar="PATH", help="base model (default: the configured one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a TrainingConfig field, e.g. max_steps=50, learning_rate=1e-4, lora_config.r=16, "
                        "lora_config.target_modules=q_proj,v_proj (repeatable)")
    p.add_argument("--follow", "-f", action="store_true", help="watch it; exit with its outcome")
    p = add(train, "list", train_cmd.cmd_list, "every task, newest first")
    p.add_argument("--limit", type=int, default=100, help="most tasks to show (default 100)")
    for name, handler, text in (("status", train_cmd.cmd_status, "state and progress of one task"),
                                ("watch", train_cmd.cmd_watch, "live progress until the task ends; "
                                 "exit code = outcome"),
                                ("cancel", train_cmd.cmd_cancel, "stop a pending or running task")):
        add(train, name, handler, text).add_argument("task_id", metavar="ID")
    p = add(train, "resume", train_cmd.cmd_resume, "continue an ended task from its last checkpoint")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint to continue from (default: the last)")
    p.add_argument("--follow", "-f", action="store_true", help="watch it; exit with its outcome")

    p = add(sub, "chat", chat_cmd.cmd_chat, "chat with a model, tokens streamed as they decode")
    p.add_argument("--model", metavar="PATH", help="model or LoRA adapter folder (default: the configured model)")
    p.add_argument("--message", "-m", metavar="TEXT", help="one turn, not interactive")
    p.add_argument("--system", metavar="TEXT", help="system message")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)

    p = add(sub, "eval", cmd_eval, "evaluate a model or adapter on a dataset")
    p.add_argument("--model", required=True, metavar="PATH")
    p.add_argument("--data", required=True, metavar="FILE")
    p.add_argument("--metrics", default="", help="comma-separated: loss, perplexity, accuracy, exact_match, rouge; "
                                                 "on preference pairs also preference_accuracy, reward_margin "
                                                 "(default: accuracy,loss)")
    p.add_argument("--adapter", metavar="PATH", help="LoRA adapter applied onto --model")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-samples", type=int, help="score at most N rows")
    p.add_argument("--max-new-tokens", type=int, help="answer length for generation metrics")
    p.add_argument("--per-sample", metavar="FILE", help="write one JSON line per sample here")
    p.add_argument("--reference", metavar="PATH", help="reward_margin's reference for a full model "
                                                      "(default: the configured model; an adapter's is its base)")
    p.add_argument("--beta", type=float, help="DPO beta scaling reward_margin (default 0.1)")

    p = add(sub, "export", cmd_export, "export a model (ONNX with parity proof, or merged safetensors)")
    p.add_argument("--model", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="PATH", help="folder, or a file ending in .onnx")
    p.add_argument("--format", default="onnx", choices=["onnx", "safetensors"])
    p.add_argument("--opset", type=int, help="ONNX opset (default 14)")
    p.add_argument("--adapter", metavar="PATH", help="LoRA adapter merged onto --model")
    p.add_argument("--quantize", action="store_true", help="also write a dynamic int8 model")
    p.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json)
    if args.command == "up":
        return cmd_up(args, None, out)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(out, CliError(str(exc), EXIT_USAGE, "CONFIG"))
    for name in INPUT_PATH_ARGS:
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, to_workspace(getattr(args, name), config))
    clients = Clients(config, args.timeout)
    try:
        return args.handler(args, clients, out)
    except CliError as error:
        return _fail(out, error)
    except KeyboardInterrupt:
        out.note("interrupted")
        return EXIT_CANCELLED
    finally:
        clients.close()


def _fail(out: Output, error: CliError) -> int:
    if out.json:
        out.data(error.as_json())
    else:
        print(f"wintrain: error: {error.line()}", file=sys.stderr)
    return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
