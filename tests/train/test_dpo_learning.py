"""DPO must really learn a preference: a short LoRA DPO run (real TrainService worker) on the
bundled preference set raises the held-out preference_accuracy (real EvalService: the share of
pairs whose chosen answer has the higher mean log-probability per token) above the base's, by a
margin measured over several seeds."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from services.eval.server import register as register_eval
from tests.support import InProcessServer
from tests.train.conftest import start, wait_terminal
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc
from wintrain.train.v1 import train_pb2

pytestmark = pytest.mark.slow

# Measured on this machine (README, "Preference tuning"): the base scores 0.378 on this held-out
# split (74 pairs); after the run below, seed 5: 0.743, seed 1: 0.811, seed 2: 0.770 (gains
# +0.37..+0.43). The test asserts +0.2, about half the smallest gain seen. WINTRAIN_DPO_SEED reruns it with another seed.
SEED = int(os.environ.get("WINTRAIN_DPO_SEED", "5"))
MARGIN = 0.2
CONFIG = dict(max_steps=20, per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=5e-3,
              warmup_steps=2, logging_steps=5, save_steps=0, max_length=128, max_prompt_length=48,
              weight_decay=0.0, beta=0.1, seed=SEED)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def split_by_prompt(path, train_path, test_path, test_share: float = 0.2) -> int:
    """Every pair of a prompt on the same side, by a stable hash of the prompt."""
    train, test = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        prompt = json.dumps(json.loads(line)["prompt"], ensure_ascii=False, sort_keys=True)
        bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (test if bucket < test_share else train).append(line)
    train_path.write_text("\n".join(train) + "\n", encoding="utf-8")
    test_path.write_text("\n".join(test) + "\n", encoding="utf-8")
    return len(test)


def test_lora_dpo_raises_held_out_preference_accuracy(stub, train_config, datasets_dir):
    held_out = split_by_prompt(datasets_dir / "preference_pairs.jsonl", datasets_dir / "pairs_train.jsonl",
                               datasets_dir / "pairs_test.jsonl")
    assert held_out >= 40
    resp = start(stub, strategy=train_pb2.STRATEGY_DPO, dataset="datasets/pairs_train.jsonl", output="out/dpo",
                 lora=LORA, **CONFIG)
    task = wait_terminal(stub, resp.task_id, timeout=600)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message

    with InProcessServer(train_config, "eval", register_eval) as srv:
        ev = eval_pb2_grpc.EvalServiceStub(srv.channel())

        def accuracy(model: str) -> float:
            request = eval_pb2.EvaluateRequest(dataset_path="datasets/pairs_test.jsonl",
                                               metrics=["preference_accuracy"], batch_size=8)
            if model:  # unset: the configured base model
                request.model_path = model
            return ev.Evaluate(request, timeout=600).metrics["preference_accuracy"]

        base, tuned = accuracy(""), accuracy("out/dpo")
    print(f"seed {SEED}: held-out preference_accuracy base {base:.3f} -> LoRA DPO {tuned:.3f} ({held_out} pairs)")
    assert tuned >= base + MARGIN, (base, tuned)
