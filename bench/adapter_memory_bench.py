"""Memory of many LoRA adapters on one base (issue 17 item 3).

Loads N adapters (`--adapters`, default 8) of one base through the inference model registry
and measures what the process holds: resident memory (VmRSS, freed heap given back with
malloc_trim before each reading) grown since before the first load (torch, transformers and
peft already imported), next to the registry's own accounting (the LRU's bytes). First the
base alone is loaded and answers one greedy chat ("base": the base as the process holds it
while serving, tokenizer and a working batch included); then the N adapters are loaded and
each answers one chat. Each variant runs in a fresh subprocess:

- shared (now): one copy of the base, each adapter added to it with PEFT `load_adapter`
  (one PeftModel, mixed-adapter batches);
- merged (before): each adapter merged into its own copy of the base.

Goal (issue 17): shared <= (base + N x adapter) x 1.2, adapter being its weights' bytes.

The adapters are r=8 LoRA on q/k/v/o with random weights (saved like training does), on the
embedded tiny model unless `--base` names another model folder.

    .venv/bin/python bench/adapter_memory_bench.py [--adapters 8] [--base PATH] [--rank 8]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_bytes() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_adapters(base: Path, out: Path, n: int, rank: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False, task_type="CAUSAL_LM"))
        dest = out / f"adapter-{i}"
        model.save_pretrained(dest, safe_serialization=True)
        cfg = json.loads((dest / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = str(base)
        (dest / "adapter_config.json").write_text(json.dumps(cfg))
        paths.append(dest)
    return paths


def measure(mode: str, base: Path, adapters: list[Path], workspace: Path) -> dict:
    """Runs in the subprocess: load the adapters the `mode` way; the memory it took."""
    import torch  # noqa: F401 - imported before the first reading
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from services.common.modeling import ModelSource, load_model, model_memory_bytes
    from services.inference import engine
    from services.inference.registry import ModelRegistry
    from tests.support import make_config

    torch.set_num_threads(2)
    cfg = make_config(workspace, base, **{
        "storage.allowed_roots": [str(workspace), str(adapters[0].parent), str(base.parent)],
        "inference.cache_max_models": len(adapters) + 1,
        "inference.cache_max_bytes": 1 << 50,
    })
    params = engine.check_sampling(max_tokens=8, temperature=0, top_p=1.0, top_k=0, cap=64)
    hi = [{"role": "user", "content": "hi"}]
    before = rss_bytes()
    registry = ModelRegistry(cfg)
    base_entry = registry.get(registry.default_source())
    answers = [engine.chat(base_entry, hi, params, engine.RunControl()).content]
    served_base = rss_bytes() - before  # the base as the process holds it, serving one chat
    held = []
    if mode == "shared":
        for path in adapters:
            held.append(registry.get(registry.resolve(str(path))))
        accounted = sum(e.memory_bytes for e in registry.list())
        adapter_bytes = held[0].memory_bytes
    else:
        from services.inference.registry import describe_model

        for path in adapters:
            source = ModelSource(path=path, kind="adapter", base_path=base, adapter_path=path)
            model, tok = load_model(source, cfg, merge_adapter=True)
            held.append(describe_model(str(path), source, model, tok, False))
        accounted = base_entry.memory_bytes + sum(e.memory_bytes for e in held)
        adapter_bytes = 0
    answers += [engine.chat(m, hi, params, engine.RunControl()).content for m in held]
    after = rss_bytes() - before
    return {"mode": mode, "served_base": served_base, "total": after, "accounted": accounted,
            "base_bytes": base_entry.memory_bytes, "adapter_bytes": adapter_bytes,
            "distinct_answers": len(set(answers))}


def mib(n: float) -> str:
    return f"{n / 2**20:8.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--base", type=Path, default=None, help="a full model folder (default: the tiny model)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "BASE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, base, root = args.child
        root = Path(root)
        adapters = sorted(root.glob("adapter-*"), key=lambda p: int(p.name.split("-")[1]))
        print(json.dumps(measure(mode, Path(base), adapters, root / f"ws-{mode}")))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = args.base
        if base is None:
            from tools.tiny_model import build_tiny_model

            base = root / "tiny-chat"
            build_tiny_model(base)
        base = base.resolve()
        make_adapters(base, root, args.adapters, args.rank)
        results = {}
        for mode in ("shared", "merged"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(base), str(root)],
                                 check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    shared, merged = results["shared"], results["merged"]
    n = args.adapters
    adapter = shared["adapter_bytes"]
    goal = (shared["served_base"] + n * adapter) * 1.2
    weights = shared["base_bytes"] + n * adapter
    print(f"{n} LoRA adapters (r={args.rank}, q/k/v/o) on one base; base weights {mib(shared['base_bytes'])},"
          f" one adapter's weights {adapter / 1024:.1f} KiB")
    print("process memory growth (VmRSS after malloc_trim), one greedy chat per model included:")
    print(f"  base alone, serving                      {mib(shared['served_base'])}")
    print(f"  goal: (base + {n} x adapter) x 1.2         {mib(goal)}")
    print(f"  shared base + {n} adapters (now)          {mib(shared['total'])}"
          f"  = {shared['total'] / (shared['served_base'] + n * adapter):.2f}x base + {n} x adapter")
    print(f"  base + {n} merged copies (before)         {mib(merged['total'])}"
          f"  = {merged['total'] / (merged['served_base'] + n * adapter):.2f}x")
    print(f"registry (LRU) bytes: shared {mib(shared['accounted'])} (weights: base + {n} x adapter = {mib(weights)}),"
          f" merged {mib(merged['accounted'])}")
    print(f"distinct greedy answers of the {n + 1} models: shared {shared['distinct_answers']}, merged {merged['distinct_answers']}")
    ok = shared["total"] <= goal
    print(f"goal {'met' if ok else 'NOT met'}: {mib(shared['total'])} <= {mib(goal)}")

if __name__ == "__main__":
    main()
