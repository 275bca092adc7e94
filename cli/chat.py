"""`wintrain chat`: an interactive chat that streams tokens as they decode.

The conversation is kept and sent whole with every turn. Ctrl-C while an answer streams
cancels that gRPC call (the server stops generating) and drops the unfinished turn; Ctrl-C
(or Ctrl-D, or `/exit`) at the prompt quits. `/reset` starts a new conversation.
With `--json` each answer is the unary Chat RPC's, as gRPC gives it (`model`: the path that
answered, `content`, `thinking_content`, `finish_reason`, `usage`), one JSON object per turn.
"""

from __future__ import annotations

import sys

import grpc

from cli.client import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, CliError, Clients
from cli.output import Output, to_dict
from wintrain.inference.v1 import inference_pb2

PROMPT = "you> "


def _request(args, messages: list[dict]) -> inference_pb2.ChatRequest:
    request = inference_pb2.ChatRequest(
        messages=[inference_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages])
    if args.model:
        request.model_path = args.model
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(request, name, value)
    return request


def unary_answer(clients: Clients, args, messages: list[dict]) -> dict:
    """One answer from the unary Chat RPC (what `--json` prints): the answer exactly as gRPC
    Chat gives it, `model` (the path that answered) included. Ctrl-C cancels the call."""
    future = clients.stub("inference").Chat.future(_request(args, messages), timeout=args.timeout,
                                                   metadata=clients.metadata)
    try:
        response = future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise
    except grpc.RpcError as exc:
        raise clients.error("inference", exc) from None
    answer = to_dict(response)
    # The conversation's next turn carries the answer as the model wrote it.
    return {"model": answer.pop("model"), "content": answer.pop("content"), **answer}


def answer(clients: Clients, out: Output, args, messages: list[dict]) -> dict:
    """`--json`: the unary answer (it names the model); otherwise tokens streamed to stdout."""
    return unary_answer(clients, args, messages) if out.json else stream_answer(clients, out, args, messages)


def stream_answer(clients: Clients, out: Output, args, messages: list[dict]) -> dict:
    """Stream one answer to stdout. Returns {content, finish_reason, usage}. Raises
    KeyboardInterrupt (after cancelling the call) when the user interrupts it."""
    call = clients.stream("inference", "ChatStream", _request(args, messages), timeout=args.timeout)
    pieces: list[str] = []
    result = {"content": "", "finish_reason": "", "usage": {}}
    try:
        for event in call:
            if event.token:
                pieces.append(event.token)
                if not out.json:
                    sys.stdout.write(event.token)
                    sys.stdout.flush()
            if event.HasField("finish_reason"):
                result["finish_reason"] = event.finish_reason
            if event.HasField("usage"):
                result["usage"] = to_dict(event.usage)
    except KeyboardInterrupt:
        call.cancel()
        raise
    except grpc.RpcError as exc:
        if pieces and not out.json:
            sys.stdout.write("\n")
        raise clients.error("inference", exc) from None
    result["content"] = "".join(pieces)
    return result


def cmd_chat(args, clients: Clients, out: Output) -> int:
    messages: list[dict] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    if args.message is not None:
        messages.append({"role": "user", "content": args.message})
        try:
            result = answer(clients, out, args, messages)
        except KeyboardInterrupt:
            out.note("\n[answer cancelled]")
            return EXIT_CANCELLED
        if out.json:
            out.data(result)
        else:
            sys.stdout.write("\n")
            out.note(f"[{result['finish_reason'] or 'done'}; "
                     f"{result['usage'].get('completion_tokens', len(result['content']))} tokens]")
        return EXIT_OK

    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    if interactive and not out.json:
        out.print(f"[bold]Win-Train chat[/] with {args.model or 'the default model'}. "
                  "Ctrl-C stops an answer; Ctrl-C at the prompt, Ctrl-D or /exit quits; /reset forgets.")
    while True:
        try:
            line = input(PROMPT if interactive and not out.json else "")
        except EOFError:
            if interactive and not out.json:
                sys.stdout.write("\n")
            return EXIT_OK
        except KeyboardInterrupt:
            if not out.json:
                sys.stdout.write("\n")
            return EXIT_OK
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return EXIT_OK
        if text == "/reset":
            messages = messages[:1] if args.system else []
            out.note("[conversation reset]")
            continue
        messages.append({"role": "user", "content": line})
        if not out.json:
            sys.stdout.write("bot> " if interactive else "")
            sys.stdout.flush()
        try:
            result = answer(clients, out, args, messages)
        except KeyboardInterrupt:
            messages.pop()  # the unfinished turn is not part of the conversation
            if not out.json:
                sys.stdout.write("\n")
            out.note("[answer cancelled; Ctrl-C again at the prompt quits]")
            continue
        except CliError as error:
            messages.pop()
            if error.exit_code != EXIT_ERROR:
                raise
            # A refused turn (e.g. a too-long conversation) keeps the chat open.
            out.note(f"wintrain: error: {error.line()}")
            continue
        messages.append({"role": "assistant", "content": result["content"]})
        if out.json:
            out.data(result, compact=True)
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
