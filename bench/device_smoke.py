"""Device smoke: the project's own code paths on whatever accelerator this machine has.

On the tiny model built here, in one process:
1. training: the train worker's recipe (TRL SFTTrainer with a PEFT LoRA, `assistant_only_loss`,
   bf16 mixed precision on a CUDA GPU that supports it) for a few optimizer steps;
2. generation: the inference service's model registry and engine answer from the trained
   adapter (bf16 weights on CUDA);
3. scoring: the eval service's masked loss on the same device, against a manual forward.

On a CPU machine the same code runs in fp32: that is what the test suite checks, so the script
cannot rot. On a GPU machine it is the check no CI machine can run (see bench/device_check.sh).
Prints one JSON object; with $OUT set (the device tool's output folder) also writes it there.

    .venv/bin/python bench/device_smoke.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASET = REPO / "services" / "common" / "assets" / "datasets" / "bilingual_chat.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of the training check")
    args = parser.parse_args(argv)

    import torch

    from services.common.config import REPO_ROOT, load_config
    from services.common.modeling import pick_device
    from tools.tiny_model import build_tiny_model
    from services.eval.metrics import aggregate, encode_conversations, score_samples
    from services.inference import engine
    from services.inference.registry import ModelRegistry
    from services.train.progress import StopControl
    from services.train.recipe import RunSpec, build_sft_config, run
    from services.train.settings import TrainingSettings

    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
        report["bf16_supported"] = torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="device-smoke-") as tmp:
        ws = Path(tmp)
        tiny = build_tiny_model(ws / "tiny-chat")
        config = load_config(REPO_ROOT / "config.yaml", env={}).with_overrides({
            "storage.workspace": str(ws), "storage.allowed_roots": [str(ws)],
            "model.base_model_path": str(tiny), "inference.auto_load": False,
        })
        device, dtype = pick_device(config)
        report.update(device=device, serving_dtype=str(dtype).replace("torch.", ""))

        # 1. Training: the worker's recipe, no job store.
        spec = RunSpec(
            task_id="device-smoke", attempt=1, strategy="lora",
            settings=TrainingSettings.from_plain({
                "max_steps": args.steps, "logging_steps": 1, "save_steps": 0, "learning_rate": 3e-3,
                "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                "lora_config": {}}),
            dataset=DATASET, output_dir=ws / "lora", model=tiny, run_dir=ws / "run",
        )
        sft = build_sft_config(spec, device)
        started = time.perf_counter()
        result = run(spec, config, store=None, stop=StopControl(None, spec.task_id, spec.attempt))
        entries = [json.loads(line) for line in (ws / "lora" / "training_log.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in entries if e.get("kind") == "train" and "loss" in e]
        report["train"] = {
            "outcome": result.outcome, "steps": result.step, "bf16": bool(sft.bf16), "fp16": bool(sft.fp16),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - started, 2),
        }

        # 2. Generation: the inference registry and engine, from the adapter just trained.
        registry = ModelRegistry(config)
        loaded = registry.get(registry.resolve(str(ws / "lora")))
        started = time.perf_counter()
        answer = engine.chat(loaded, [{"role": "user", "content": "你好"}],
                             engine.SamplingParams(max_tokens=16, min_tokens=16), engine.RunControl())
        report["generate"] = {
            "device": loaded.device, "dtype": loaded.dtype, "tokens": answer.completion_tokens,
            "finish_reason": answer.finish_reason, "seconds": round(time.perf_counter() - started, 3),
        }

        # 3. Scoring: the eval path on the same model and device, against a manual forward.
        model, tokenizer = loaded.model, loaded.tokenizer
        rows = [json.loads(line)["conversations"] for line in DATASET.read_text(encoding="utf-8").splitlines()][:16]
        samples = encode_conversations(tokenizer, rows, 512)
        ours = aggregate(score_samples(model, samples, batch_size=8, pad_token_id=tokenizer.pad_token_id)).loss
        total, count = 0.0, 0
        with torch.inference_mode():
            for s in samples:
                ids = torch.tensor([s.input_ids], device=model.device)
                labels = torch.tensor([[t if m else -100 for t, m in zip(s.input_ids, s.assistant_mask)]],
                                      device=model.device)
                n = int((labels[:, 1:] != -100).sum())
                total += float(model(input_ids=ids, labels=labels).loss) * n
                count += n
        manual = total / count
        report["eval"] = {"loss": ours, "manual_loss": manual, "abs_diff": abs(ours - manual)}
        registry.unload(str(ws / "lora"))

    ok = (report["train"]["outcome"] == "completed" and report["train"]["steps"] == args.steps
          and report["train"]["last_loss"] is not None and math.isfinite(report["train"]["last_loss"])
          and report["generate"]["tokens"] == 16
          # bf16 weights on a GPU round differently from fp32; on CPU both are fp32.
          and report["eval"]["abs_diff"] <= (5e-2 if device == "cuda" else 1e-4))
    report["ok"] = ok
    text = json.dumps(report, ensure_ascii=False, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "device_smoke.json").write_text(text + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
