"""Inference speed: KV-cached streaming and batched generation against the original
algorithms and bare `model.generate`, in one run.

For two models — the embedded tiny chat model and a generated ~25M-parameter Qwen2 model
(same tokenizer, bigger config, random weights, built into a temporary folder) — a real
InferenceService runs in this process (grpc.aio server on a free port, the same bootstrap the
service uses) and the bench is its gRPC client. Greedy decoding; lengths are fixed with
`min_tokens` (eos suppressed) so every variant generates exactly the same number of tokens.

Stream N new tokens (default 256), median seconds of R runs after a warm-up:
- bare:     `model.generate(max_new_tokens=N, min_new_tokens=N)` in this process (the floor);
- ours:     `ChatStream` over gRPC, every event received (goal: <= 1.15x bare);
- engine:   our engine with its streaming decoder, no gRPC (where the overhead lives);
- original: the original algorithm: for every token, `generate(max_new_tokens=1)` over the
            whole sequence so far, decode the new token (quadratic).
Time to first token: first ChatStream event, against the original's first token.

Batch: P prompts (default 32, from the bundled bilingual dataset), M new tokens each:
`Batch` (one RPC; every prompt a row of the model's running batch, `inference.batch_size`
rows per step) against a sequential loop of `Chat` (the original's batch). Goal: >= 3x
throughput. Concurrent users through the gateway: bench/serving_bench.py.

    .venv/bin/python bench/inference_bench.py [--tokens 256] [--repeats 3] [--prompts 32]
        [--batch-tokens 32] [--models tiny,medium]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from medium_model import build_medium_model  # noqa: E402

from services.common.modeling import load_model, resolve_model_source  # noqa: E402
from tools.tiny_model import build_tiny_model  # noqa: E402
from services.inference import engine  # noqa: E402
from services.inference.registry import describe_model  # noqa: E402
from services.inference.server import InferenceServicer, register  # noqa: E402
from tests.support import InProcessServer, make_config  # noqa: E402
from wintrain.inference.v1 import inference_pb2 as pb  # noqa: E402
from wintrain.inference.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

PROMPT = "请用几句话介绍一下你自己，并说明你能做什么。"
DATASET = REPO / "services" / "common" / "assets" / "datasets" / "bilingual_chat.jsonl"


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `fn()` over `repeats` runs (after one warm-up) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def batch_prompts(n: int) -> list[str]:
    prompts = []
    for line in DATASET.read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["conversations"]
        prompts.extend(t["content"] for t in turns if t["role"] == "user")
        if len(prompts) >= n:
            break
    return prompts[:n]


def bench_model(label: str, model_dir: Path, workspace: Path, args) -> dict:
    n = args.tokens
    cfg = make_config(workspace, model_dir, **{"inference.max_new_tokens_cap": max(2048, n)})
    source = resolve_model_source(model_dir, cfg)
    model, tokenizer = load_model(source, cfg)
    loaded = describe_model(str(model_dir), source, model, tokenizer, True)
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = engine.render_prompt(tokenizer, messages, False)
    ids = torch.tensor([prompt_ids])
    eos, pad = list(loaded.eos_ids), loaded.pad_id
    out: dict = {"label": label, "parameters": loaded.parameters}

    def bare(tokens=n):
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, use_model_defaults=False, eos_token_id=eos, pad_token_id=pad)
        assert gen.shape[1] - ids.shape[1] == tokens
        return gen

    def original(tokens=n, first_only=False):
        # The original server: re-run generate over the whole sequence for every token.
        seq = ids
        pieces = []
        with torch.inference_mode():
            for _ in range(1 if first_only else tokens):
                seq = model.generate(seq, attention_mask=torch.ones_like(seq), max_new_tokens=1, min_new_tokens=1,
                                     do_sample=False, use_model_defaults=False, eos_token_id=eos, pad_token_id=pad)
                pieces.append(tokenizer.decode(seq[0, -1:], skip_special_tokens=True))
        return pieces

    params = engine.SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0)

    def ours_engine():
        pieces: list[str] = []
        done = engine.chat(loaded, messages, params, engine.RunControl(), on_text=pieces.append)
        assert done.completion_tokens == n
        return pieces

    servicer = InferenceServicer(cfg)
    with InProcessServer(cfg, "inference", functools.partial(register, servicer=servicer)) as server:
        stub = pb_grpc.InferenceServiceStub(server.channel())
        stub.LoadModel(pb.LoadModelRequest(), timeout=600)
        request = pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=PROMPT)], max_tokens=n,
                                 min_tokens=n, temperature=0)
        ttfts: list[float] = []

        def ours_grpc():
            start = time.perf_counter()
            events = []
            for event in stub.ChatStream(request, timeout=600):
                if not events:
                    ttfts.append(time.perf_counter() - start)
                events.append(event)
            assert events[-1].usage.completion_tokens == n, events[-1]
            return events

        # Interleave the variants round by round so that machine noise hits them alike.
        results = {"bare": [], "ours": [], "engine": [], "original": []}
        fns = {"bare": bare, "ours": ours_grpc, "engine": ours_engine, "original": original}
        for fn in fns.values():
            fn()  # warm-up
        ttfts.clear()
        for _ in range(args.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                results[name].append(time.perf_counter() - start)
        for name, times in results.items():
            out[f"stream_{name}_s"] = statistics.median(times)
        out["ttft_ours_s"] = statistics.median(ttfts)
        out["ttft_original_s"], _ = median_time(functools.partial(original, first_only=True), args.repeats)
        out["ttft_bare_s"], _ = median_time(functools.partial(bare, 1), args.repeats)

        # Batch: one Batch RPC against a sequential loop of Chat RPCs, same greedy work.
        prompts = batch_prompts(args.prompts)
        m = args.batch_tokens

        def batch_rpc():
            reply = stub.Batch(pb.BatchRequest(prompts=prompts, max_tokens=m, min_tokens=m, temperature=0), timeout=1800)
            assert reply.usage.completion_tokens == m * len(prompts)
            return list(reply.results)

        def chat_loop():
            return [stub.Chat(pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=p)], max_tokens=m,
                                             min_tokens=m, temperature=0), timeout=600).content for p in prompts]

        out["batch_s"], batched = median_time(batch_rpc, args.repeats)
        out["chat_loop_s"], looped = median_time(chat_loop, max(1, args.repeats // 2))
        out["batch_same_answers"] = sum(a == b for a, b in zip(batched, looped))
        out["batch_prompts"], out["batch_tokens"] = len(prompts), m
    return out


def report(r: dict, n: int) -> None:
    bare = r["stream_bare_s"]
    print(f"\n== {r['label']} model: {r['parameters'] / 1e6:.1f}M parameters ==")
    print(f"stream {n} new tokens (median s, ratio to bare generate; goal: ours <= 1.15x)")
    for name, title in (("bare", "bare model.generate"), ("ours", "ours: ChatStream over gRPC"),
                        ("engine", "ours: engine, no gRPC"), ("original", "original per-token algorithm")):
        t = r[f"stream_{name}_s"]
        print(f"  {title:32s} {t:8.3f} s  {n / t:8.1f} tok/s  {t / bare:6.2f}x")
    print(f"  ours is {r['stream_original_s'] / r['stream_ours_s']:.1f}x faster than the original algorithm")
    print(f"time to first token: ours (ChatStream) {r['ttft_ours_s'] * 1000:.1f} ms, "
          f"bare generate {r['ttft_bare_s'] * 1000:.1f} ms, original {r['ttft_original_s'] * 1000:.1f} ms")
    tp_batch = r["batch_prompts"] * r["batch_tokens"] / r["batch_s"]
    tp_loop = r["batch_prompts"] * r["batch_tokens"] / r["chat_loop_s"]
    print(f"{r['batch_prompts']} prompts x {r['batch_tokens']} tokens: Batch {r['batch_s']:.2f} s ({tp_batch:.0f} tok/s), "
          f"Chat loop {r['chat_loop_s']:.2f} s ({tp_loop:.0f} tok/s): {tp_batch / tp_loop:.1f}x throughput "
          f"(goal >= 3x); {r['batch_same_answers']}/{r['batch_prompts']} answers identical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=32)
    parser.add_argument("--models", default="tiny,medium")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the in-process server logs every RPC at INFO
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        tmp = Path(tmp)
        tiny = tmp / "tiny-chat"
        build_tiny_model(tiny)
        models = {"tiny": tiny}
        if "medium" in args.models:
            models["medium"] = build_medium_model(tiny, tmp / "medium")
        for label, path in models.items():
            if label not in args.models.split(","):
                continue
            r = bench_model(label, path, tmp / f"ws-{label}", args)
            report(r, args.tokens)


if __name__ == "__main__":
    main()
