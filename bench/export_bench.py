"""Greedy decoding speed of an ONNX export (ONNX Runtime) against PyTorch, in one run.

For two models — the embedded tiny chat model and a generated ~25M-parameter Qwen2 model
(same tokenizer, bigger config, random weights) — this exports through the real export
domain (`services.export.exporter.run_export`, with its parity proof), then decodes the
same chat prompts greedily with the KV cache three ways, at the same thread count:

- PyTorch: `AutoModelForCausalLM.generate` (the baseline)
- ORT/optimum: `ORTModelForCausalLM.generate` on the export (what deployments use)
- ORT/loop: a plain numpy KV-cache loop over the exported graph (`parity.OrtKVDecoder`)

and prints tokens/s and the ratio to PyTorch (goal: ORT >= 1.0x), plus the export time.

    .venv/bin/python bench/export_bench.py [--tokens 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
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

from services.common.config import load_config  # noqa: E402
from tools.tiny_model import build_tiny_model  # noqa: E402
from services.export import parity  # noqa: E402
from services.export.exporter import ExportSpec, run_export  # noqa: E402



def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def bench_model(name: str, model_dir: Path, workspace: Path, args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config(REPO / "config.yaml", env={}).with_overrides({
        "storage.workspace": str(workspace), "storage.allowed_roots": [str(workspace), str(model_dir.parent)],
        "model.base_model_path": str(model_dir),
    })
    t0 = time.perf_counter()
    result = run_export(ExportSpec(model_path=model_dir, output_path=workspace / f"{name}-onnx", opset=args.opset), config)
    total_export = time.perf_counter() - t0
    export_dir = workspace / f"{name}-onnx"

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    prompts = parity.encode_prompts(tokenizer)
    pad = tokenizer.pad_token_id or 0
    kwargs = parity.generation_kwargs(args.tokens, pad)
    ort_lm = parity.load_ort_causal_lm(export_dir, "model.onnx", threads=args.threads)
    loop = parity.OrtKVDecoder(export_dir / "model.onnx", threads=args.threads)
    n_tokens = args.tokens * len(prompts)
    outputs: dict[str, list[list[int]]] = {}

    def hf_generate(lm, key):
        def run():
            outs = []
            with torch.inference_mode():
                for p in prompts:
                    ids = torch.tensor([p])
                    outs.append(lm.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)[0, len(p):].tolist())
            outputs[key] = outs
        return run

    def ort_loop():
        outputs["loop"] = [loop.greedy(p, args.tokens) for p in prompts]

    seconds = {
        "pytorch": timed(hf_generate(model, "pytorch"), args.repeats),
        "ort_optimum": timed(hf_generate(ort_lm, "ort_optimum"), args.repeats),
        "ort_loop": timed(ort_loop, args.repeats),
    }
    return {
        "name": name, "params": params, "export_time": result.export_time, "export_total": total_export,
        "max_abs_diff": result.parity.max_abs_diff, "onnx_bytes": result.total_size,
        "tps": {k: n_tokens / s for k, s in seconds.items()},
        "same_tokens": outputs["pytorch"] == outputs["ort_optimum"] == outputs["loop"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads for both runtimes")
    ap.add_argument("--opset", type=int, default=14)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        tmp = Path(tmp)
        workspace = tmp / "ws"
        workspace.mkdir()
        tiny = build_tiny_model(tmp / "models" / "tiny-chat")
        medium = build_medium_model(tiny, tmp / "models" / "qwen2-25m")
        for name, folder in (("tiny", tiny), ("qwen2-25m", medium)):
            rows.append(bench_model(name, folder, workspace, args))

    print(f"\nGreedy decode with KV cache, {args.tokens} tokens x {len(parity.SAMPLE_CONVERSATIONS)} prompts, "
          f"{args.threads} thread(s), opset {args.opset}, tokens/s (median of {args.repeats})")
    print(f"{'model':<11}{'params':>8}{'export s':>10}{'PyTorch':>10}{'ORT optimum':>13}{'ratio':>7}"
          f"{'ORT loop':>10}{'ratio':>7}{'max|diff|':>11}  same tokens")
    for r in rows:
        t = r["tps"]
        print(f"{r['name']:<11}{r['params'] / 1e6:>7.1f}M{r['export_time']:>10.2f}{t['pytorch']:>10.1f}"
              f"{t['ort_optimum']:>13.1f}{t['ort_optimum'] / t['pytorch']:>6.2f}x{t['ort_loop']:>10.1f}"
              f"{t['ort_loop'] / t['pytorch']:>6.2f}x{r['max_abs_diff']:>11.2e}  {r['same_tokens']}")
    print("export s: writing the ONNX files (optimum exporter); with loading, proof: "
          + ", ".join(f"{r['name']} {r['export_total']:.1f}s" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
