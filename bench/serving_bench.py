"""Serving many users: C concurrent greedy streams through the HTTP gateway against one bare
batched `generate` of the same C prompts, in one run; and one long stream through the gateway
against bare `generate` with a streamer.

The inference service (`python -m services.inference`) and the gateway (`python -m gateway`)
run as real processes on free ports on the embedded tiny model; this process is the HTTP
client (asyncio, raw keep-alive HTTP/1.1, SSE parsed by hand so that the figures are the
server's, not a client library's) and runs the bare baselines with its own copy of the model
while the services are idle. Lengths are fixed with `min_tokens` (eos suppressed), so every
variant generates exactly the same tokens.

For C = 1, 4, 8, 16 (`--concurrency`), T new tokens each (`--tokens`, default 128):
- streams: C `POST /api/inference/chat/stream` started at once; wall time until the last ends,
  aggregate tokens/s (C*T / wall) and its ratio to one stream alone measured in the same round,
  p50/p95 time to first token;
- bare:    one left-padded `model.generate` of the same C prompts (the floor).
Goals at C = 8: wall <= 1.5x bare batched; aggregate tokens/s >= 2.5x one stream's (C = 1).

Stream path: one greedy stream of S tokens (`--stream-tokens`, default 256) through the
gateway (HTTP SSE) against bare `generate` with a streamer that decodes each token
(goal <= 1.15x). Median of R runs (`--repeats`), interleaved.

    .venv/bin/python bench/serving_bench.py [--tokens 128] [--concurrency 1,4,8,16]
        [--stream-tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.stdout.reconfigure(line_buffering=True)  # progress shows while a long run goes on
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchlib import stop_processes  # noqa: E402
from tests.support import free_port, service_env, wait_for_health  # noqa: E402
from tools.tiny_model import build_tiny_model  # noqa: E402

PROMPTS = ["请用几句话介绍一下你自己。", "Tell me a short story about a cat.", "今天天气怎么样？",
           "What is the capital of France?", "给我讲一个笑话。", "How do I sort a list in Python?",
           "推荐一本好书。", "Explain what a neural network is.", "你最喜欢什么颜色？", "Write a haiku about rain.",
           "如何学习英语？", "What is 17 times 23?", "介绍一下长城。", "Name three fruits.", "什么是机器学习？",
           "Say hello in French."]


# --------------------------------------------------------------------------- HTTP / SSE client
async def stream_chat(port: int, prompt: str, tokens: int) -> tuple[float, float, int]:
    """One streamed chat through the gateway: (seconds to first token event, total seconds,
    token events)."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                       "min_tokens": tokens, "temperature": 0}).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/inference/chat/stream HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    chunked = b"chunked" in head.lower()
    first = None
    events = 0
    buf = b""
    done = False
    while not done:
        if chunked:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            buf += data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                msg = json.loads(payload)
                if msg.get("token"):
                    events += 1
                    if first is None:
                        first = time.perf_counter() - start
                if msg.get("usage"):
                    assert int(msg["usage"]["completion_tokens"]) == tokens, msg
                    done = True
    writer.close()
    return first or 0.0, time.perf_counter() - start, events


async def concurrent_streams(port: int, prompts: list[str], tokens: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_chat(port, p, tokens) for p in prompts))
    return time.perf_counter() - start, [r[0] for r in results]


# --------------------------------------------------------------------------- baselines
class Bare:
    """The tiny model in this process: batched generate and generate with a streamer."""

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos

    def ids(self, prompt: str) -> list[int]:
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, enable_thinking=False)

    def batched(self, prompts: list[str], tokens: int) -> float:
        rows = [self.ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                      do_sample=False, use_model_defaults=False, eos_token_id=self.eos,
                                      pad_token_id=self.pad)
        assert out.shape[1] - width == tokens
        return time.perf_counter() - start

    def streamed(self, prompt: str, tokens: int) -> float:
        from transformers.generation.streamers import BaseStreamer

        tok = self.tok

        class Decode(BaseStreamer):
            def __init__(self):
                self.ids: list[int] = []
                self.skip = True

            def put(self, value):
                if self.skip:
                    self.skip = False
                    return
                self.ids.extend(value.reshape(-1).tolist())
                tok.decode(self.ids[-4:], skip_special_tokens=True)

            def end(self):
                pass

        ids = torch.tensor([self.ids(prompt)])
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False, use_model_defaults=False,
                                eos_token_id=self.eos, pad_token_id=self.pad, streamer=Decode())
        return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--stream-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    model_dir = tmp / "tiny-chat"
    build_tiny_model(model_dir)
    workspace = tmp / "ws"
    workspace.mkdir()
    inf_port, api_port = free_port(), free_port()
    env = service_env({
        "storage.workspace": str(workspace), "storage.allowed_roots": [str(workspace)],
        "model.base_model_path": str(model_dir), "services.inference.port": inf_port,
        "services.inference.metrics_port": free_port(), "api.port": api_port,
        "inference.max_concurrent": max(levels), "inference.batch_size": max(levels),
        "inference.max_new_tokens_cap": max(2048, args.stream_tokens),
    })
    env.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    procs = []
    try:
        with open(tmp / "inference.log", "wb") as inf_log, open(tmp / "gateway.log", "wb") as gw_log:
            procs.append(subprocess.Popen([sys.executable, "-m", "services.inference"], cwd=REPO, env=env,
                                          stdout=inf_log, stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env,
                                          stdout=gw_log, stderr=subprocess.STDOUT))
            wait_for_health(f"127.0.0.1:{inf_port}", timeout=120, service="wintrain.inference.v1.InferenceService")
            bare = Bare(model_dir)
            print(f"serving bench: tiny model, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"{os.cpu_count()} CPUs; inference service, gateway and this client are separate processes")
            asyncio.run(_warm(api_port))
            bare.batched(PROMPTS[:2], 8)
            print(f"\n{args.tokens} new tokens per stream, greedy, median of {args.repeats} (goals at C=8: "
                  f"wall <= 1.5x bare batched, aggregate >= 2.5x one stream)")
            print(f"  {'C':>3} {'streams s':>10} {'bare batched s':>15} {'ratio':>7} {'agg tok/s':>10} "
                  f"{'x one stream':>13} {'TTFT p50 ms':>12} {'p95 ms':>8}")
            for c in levels:
                prompts = [PROMPTS[i % len(PROMPTS)] for i in range(c)]
                walls, bares, ttfts, gains = [], [], [], []
                for _ in range(args.repeats):  # interleaved: the same machine noise for all three
                    wall, firsts = asyncio.run(concurrent_streams(api_port, prompts, args.tokens))
                    walls.append(wall)
                    ttfts.extend(firsts)
                    bares.append(bare.batched(prompts, args.tokens))
                    one, _ = asyncio.run(concurrent_streams(api_port, prompts[:1], args.tokens))
                    gains.append((c / wall) / (1 / one))  # aggregate rate / one stream's, same round
                wall, floor = statistics.median(walls), statistics.median(bares)
                rate = c * args.tokens / wall
                print(f"  {c:>3} {wall:>10.3f} {floor:>15.3f} {wall / floor:>6.2f}x {rate:>10.0f} "
                      f"{statistics.median(gains):>12.2f}x {pct(ttfts, 50) * 1000:>12.1f} {pct(ttfts, 95) * 1000:>8.1f}")
            if args.stream_tokens:
                s = args.stream_tokens
                ours, base = [], []
                asyncio.run(stream_chat(api_port, PROMPTS[0], s))
                bare.streamed(PROMPTS[0], s)
                for _ in range(args.repeats):
                    ours.append(asyncio.run(stream_chat(api_port, PROMPTS[0], s))[1])
                    base.append(bare.streamed(PROMPTS[0], s))
                o, b = statistics.median(ours), statistics.median(base)
                print(f"\none stream of {s} tokens through the gateway (HTTP SSE): {o:.3f} s; bare generate with a "
                      f"streamer: {b:.3f} s; {o / b:.2f}x (goal <= 1.15x)")
    finally:
        stop_processes(procs, 10)


async def _warm(port: int) -> None:
    for _ in range(40):
        try:
            await stream_chat(port, "hi", 4)
            return
        except (OSError, AssertionError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.5)
    raise RuntimeError("the gateway never answered a chat stream")


if __name__ == "__main__":
    main()
