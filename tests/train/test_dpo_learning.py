"""DPO must really learn a preference: a short LoRA DPO run (real TrainService worker) on the
bundled preference set gives the held-out pairs a DPO reward margin (real EvalService, reference:
the base) above a threshold measured over several seeds, without lowering the held-out
preference_accuracy (the share of pairs whose chosen answer has the higher mean log-probability
per token) below the base's."""

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

# Measured on this machine with the pre-trained embedded model (d9dea09), 40 steps: the base
# already prefers the concise answers on this held-out split (74 pairs): preference_accuracy
# 0.905, so it can barely rise (seed 1: 0.919, seed 2: 0.946, seed 5: 0.905; 20 steps: seed 1
# 0.905, seed 5 0.932). The held-out reward_margin (DPO's implicit reward of chosen over
# rejected, against the base with the adapter disabled; 0 for the base itself) is the learning
# signal: 20.3, 14.6, 21.9 (seeds 1, 2, 5). The test asserts accuracy not below the base's and a
# margin of at least 7, about half the smallest seen. WINTRAIN_DPO_SEED reruns it with another
# seed, WINTRAIN_DPO_STEPS with another length.
SEED = int(os.environ.get("WINTRAIN_DPO_SEED", "5"))
MIN_REWARD_MARGIN = 7.0
STEPS = int(os.environ.get("WINTRAIN_DPO_STEPS", "40"))
CONFIG = dict(max_steps=STEPS, per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=5e-3,
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


def test_lora_dpo_learns_the_held_out_preference(stub, train_config, datasets_dir):
    held_out = split_by_prompt(datasets_dir / "preference_pairs.jsonl", datasets_dir / "pairs_train.jsonl",
                               datasets_dir / "pairs_test.jsonl")
    assert held_out >= 40
    resp = start(stub, strategy=train_pb2.STRATEGY_DPO, dataset="datasets/pairs_train.jsonl", output="out/dpo",
                 lora=LORA, **CONFIG)
    task = wait_terminal(stub, resp.task_id, timeout=600)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message

    with InProcessServer(train_config, "eval", register_eval) as srv:
        ev = eval_pb2_grpc.EvalServiceStub(srv.channel())

        def scores(model: str) -> dict:
            request = eval_pb2.EvaluateRequest(dataset_path="datasets/pairs_test.jsonl",
                                               metrics=["preference_accuracy", "reward_margin"], batch_size=8)
            if model:  # unset: the configured base model
                request.model_path = model
            return ev.Evaluate(request, timeout=600).metrics

        base_scores, tuned_scores = scores(""), scores("out/dpo")
    base, tuned = base_scores["preference_accuracy"], tuned_scores["preference_accuracy"]
    margin = tuned_scores["reward_margin"]
    print(f"seed {SEED}: held-out preference_accuracy base {base:.3f} -> LoRA DPO {tuned:.3f} ({held_out} pairs); "
          f"reward_margin base {base_scores['reward_margin']:.3f} -> {margin:.3f}")

    assert tuned >= base, (base, tuned)
    assert margin >= MIN_REWARD_MARGIN, margin

