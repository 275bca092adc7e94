"""Evaluation speed: our batched, assistant-masked scoring against the original per-sample loop,
on the same rows of the bundled bilingual dataset, in one run.

- original: for every conversation, render it fully with the chat template, tokenize, one
            forward pass with `labels=input_ids` (loss over ALL tokens, prompt and template
            included), then average the per-sample mean losses. One sample at a time.
- ours:     the service's code path (`services.eval.metrics`): chat template with the
            assistant mask, right-padded batches of `--batch-size` (default 8) grouped by
            length, cross-entropy on assistant tokens only, token-weighted over the dataset,
            token accuracy in the same pass.

Both start from the same loaded model and include tokenization. The two run in turn for
`--repeats` rounds and the best of each is kept, wall time and this process's CPU time (the
machine may be shared). Goal: ours >= 3x the original's samples/s at batch 8.

Beside the times it prints the arithmetic each side does (matrix-multiply FLOPs counted from the
model's config and the token counts, padding included) and this machine's dense fp32 matmul
rate measured in the same process, so it shows how close to the hardware's limit each side runs
and the best ratio that arithmetic allows here.

For two models: the embedded tiny chat model and a generated ~25M-parameter Qwen2 (same
tokenizer, random weights, built into a temporary folder). The losses differ by design: the
original scores prompt and template tokens too, and averages per-sample means.

    .venv/bin/python bench/eval_bench.py [--rows 200] [--batch-size 8] [--repeats 2]
        [--models tiny,medium] [--threads N] [--device cpu|cuda] [--dtype auto|float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
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

from tools.tiny_model import build_tiny_model  # noqa: E402
from services.eval.metrics import aggregate, encode_conversations, score_samples  # noqa: E402

DATASET = REPO / "services" / "common" / "assets" / "datasets" / "bilingual_chat.jsonl"
MAX_LENGTH = 512


def original_loop(model, tokenizer, conversations) -> float:
    """The original Win-Train evaluation: per sample, all tokens, mean of per-sample means."""
    losses = []
    with torch.no_grad():
        for conv in conversations:
            text = tokenizer.apply_chat_template(conv, tokenize=False)
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_LENGTH).to(model.device)
            out = model(**enc, labels=enc["input_ids"])
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


def ours(model, tokenizer, conversations, batch_size: int) -> tuple[float, float]:
    samples = encode_conversations(tokenizer, conversations, MAX_LENGTH)
    scores = score_samples(model, samples, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id)
    agg = aggregate(scores)
    return agg.loss, agg.token_accuracy


def forward_flops(config, tokens: int, attended: int, head_positions: int) -> float:
    """Matrix-multiply FLOPs of a decoder forward: projections and MLP for `tokens` positions,
    attention scores and weighted sums over `attended` (query, key) pairs, the vocabulary
    projection at `head_positions`. Element-wise work (norms, activations, softmax) is left out."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = config.num_key_value_heads * head_dim
    per_token = 2 * layers * (h * heads * head_dim + 2 * h * kv + heads * head_dim * h + 3 * h * inter)
    attention = 2 * 2 * layers * heads * head_dim * attended
    return per_token * tokens + attention + 2 * h * config.vocab_size * head_positions


def arithmetic(config, tokenizer, conversations, batch_size: int) -> tuple[float, float]:
    """FLOPs of one pass of each side over the rows: the original, every sequence alone with
    causal attention and the vocabulary projection everywhere; ours, the padded length-sorted
    batches the service forms, attention over the padded width, the head at scored positions."""
    samples = encode_conversations(tokenizer, conversations, MAX_LENGTH)
    original = 0.0
    for s in samples:
        n = len(s.input_ids)
        original += forward_flops(config, n, n * (n + 1) // 2, n)
    lengths = sorted((len(s.input_ids) for s in samples), reverse=True)
    scored = sum(s.scored_tokens for s in samples)
    ours_flops = 2 * config.hidden_size * config.vocab_size * scored
    for start in range(0, len(lengths), batch_size):
        chunk = lengths[start:start + batch_size]
        width = max(chunk)
        ours_flops += forward_flops(config, width * len(chunk), width * width * len(chunk), 0)
    return original, ours_flops


def matmul_rate(config, windows: int = 5, seconds: float = 0.3) -> float:
    """This machine's dense fp32 matmul FLOP/s with the current thread setting: the best of
    a few short windows, at the model's MLP shape over 1024 tokens and at 1024 x 1024 x 1024
    (whichever runs faster), so a busy moment on a shared machine does not lower it."""
    best = 0.0
    for m, k, n in ((1024, config.hidden_size, config.intermediate_size), (1024, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        for _ in range(windows):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                torch.mm(a, b)
                count += 1
            best = max(best, 2 * m * k * n * count / (time.perf_counter() - start))
    return best


def interleaved(fns: dict, repeats: int) -> dict:
    """Run the functions in turn, `repeats` rounds, so a busy shared machine slows them alike.
    Returns name -> (best wall seconds, best CPU seconds of this process, last value)."""
    out = {name: [float("inf"), float("inf"), None] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            value = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best = out[name]
            best[0], best[1], best[2] = min(best[0], wall), min(best[1], cpu), value
    return {name: tuple(v) for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="tiny,medium")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="weights of both sides; auto: what the eval service uses (bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line)["conversations"] for line in DATASET.read_text(encoding="utf-8").splitlines()
            if line.strip()][: args.rows]
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.bfloat16 if args.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32)
    print(f"rows: {len(rows)}  batch_size: {args.batch_size}  device: {args.device}  dtype: {str(dtype)[6:]}  "
          f"torch threads: {torch.get_num_threads()}  rounds: {args.repeats} (best of each)")
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny-chat")
        folders = {"tiny": tiny}
        if "medium" in args.models.split(","):
            folders["medium"] = build_medium_model(tiny, Path(tmp) / "medium")
        for name in args.models.split(","):
            folder = folders[name]
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
            params = sum(p.numel() for p in model.parameters())
            # Warm-up (allocator, kernels) on a few rows, untimed.
            original_loop(model, tokenizer, rows[:4])
            ours(model, tokenizer, rows[:8], args.batch_size)
            res = interleaved({
                "original": lambda: original_loop(model, tokenizer, rows),
                "ours": lambda: ours(model, tokenizer, rows, args.batch_size),
            }, args.repeats)
            (t_orig, c_orig, loss_orig), (t_ours, c_ours, (loss_ours, acc)) = res["original"], res["ours"]
            sps_orig, sps_ours = len(rows) / t_orig, len(rows) / t_ours
            print(f"\n[{name}] {params / 1e6:.1f}M parameters")
            print(f"  original per-sample loop : {t_orig:7.2f} s wall ({c_orig:6.2f} s CPU)  {sps_orig:8.1f} samples/s  "
                  f"loss {loss_orig:.4f} (all tokens, mean of per-sample means)")
            print(f"  ours, batch {args.batch_size:<3}         : {t_ours:7.2f} s wall ({c_ours:6.2f} s CPU)  "
                  f"{sps_ours:8.1f} samples/s  loss {loss_ours:.4f} (assistant tokens, token-weighted), "
                  f"token accuracy {acc:.4f}")
            print(f"  speed-up                 : {sps_ours / sps_orig:.2f}x samples/s, {c_orig / c_ours:.2f}x CPU time"
                  f"  (goal >= 3x)")
            f_orig, f_ours = arithmetic(model.config, tokenizer, rows, args.batch_size)
            if args.device == "cpu" and dtype == torch.float32:
                rate = matmul_rate(model.config)
                print(f"  arithmetic               : original {f_orig / 1e9:.1f} GFLOP, ours {f_ours / 1e9:.1f} GFLOP "
                      f"(x{f_orig / f_ours:.2f} less)")
                print(f"  matmul rate              : original {f_orig / t_orig / 1e9:.1f} GFLOP/s, ours "
                      f"{f_ours / t_ours / 1e9:.1f} GFLOP/s; this machine's dense fp32 matmul {rate / 1e9:.1f} GFLOP/s")
                print(f"  bound                    : ours at that rate would take {f_ours / rate:.2f} s, "
                      f"a ratio of x{t_orig / (f_ours / rate):.2f} at best for this arithmetic")
            del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
