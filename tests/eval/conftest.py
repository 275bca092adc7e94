"""Eval fixtures: one shared workspace holding the tiny model, a copy of it fully fine-tuned
in-test on the QA facts (a plain torch loop), and a LoRA adapter trained on them (PEFT), so
the slow part (training) runs once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support import make_config

DATASETS = Path(__file__).resolve().parents[2] / "services" / "common" / "assets" / "datasets"
QA_FACTS = DATASETS / "qa_facts.jsonl"
BILINGUAL = DATASETS / "bilingual_chat.jsonl"
# The facts the in-test models learn: English and Chinese, few enough to train in seconds.
LEARNED_FACTS = (0, 1, 2, 6, 7)


def read_conversations(path: Path, limit: int | None = None) -> list[list[dict]]:
    rows = [json.loads(line)["conversations"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def learned_facts() -> list[list[dict]]:
    rows = read_conversations(QA_FACTS)
    return [rows[i] for i in LEARNED_FACTS]


def write_rows(path: Path, rows: list) -> Path:
    """Rows are conversations (lists of messages) or raw strings written as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(row if isinstance(row, str) else json.dumps({"conversations": row}, ensure_ascii=False))
            handle.write("\n")
    return path


def _batch(tokenizer, conversations):
    import torch

    enc = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
           for c in conversations]
    width = max(len(e["input_ids"]) for e in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    att = torch.zeros((len(enc), width), dtype=torch.long)
    labels = torch.full((len(enc), width), -100)
    for i, e in enumerate(enc):
        x = torch.tensor(e["input_ids"])
        n = len(x)
        ids[i, :n], att[i, :n] = x, 1
        labels[i, :n] = torch.where(torch.tensor(e["assistant_masks"]).bool(), x, torch.tensor(-100))
    return ids, att, labels


def train_plain(model, tokenizer, conversations, *, steps: int, lr: float) -> None:
    """Full-batch AdamW on assistant tokens: the smallest honest training loop."""
    import torch

    torch.manual_seed(0)
    ids, att, labels = _batch(tokenizer, conversations)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def eval_models(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """{"root", "base", "tuned", "adapter"}: the tiny model, a full fine-tune on the QA
    facts, and a LoRA adapter on the QA facts (its base is "base")."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-models")
    base = root / "base"
    shutil.copytree(tiny_model_dir, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    facts = learned_facts()

    tuned = root / "tuned"
    model = AutoModelForCausalLM.from_pretrained(base)
    train_plain(model, tokenizer, facts, steps=100, lr=3e-3)
    model.save_pretrained(tuned, safe_serialization=True)
    tokenizer.save_pretrained(tuned)

    adapter = root / "adapter"
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                            task_type="CAUSAL_LM"))
    train_plain(lora, tokenizer, facts, steps=25, lr=5e-3)  # 1e-2 diverged at step 22 on some CPUs
    lora.save_pretrained(adapter, safe_serialization=True)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(cfg))
    return {"root": root, "base": base, "tuned": tuned, "adapter": adapter}


@pytest.fixture
def eval_config(workspace, tiny_model_dir, eval_models):
    """Config on a fresh workspace that may also read the session's trained models."""
    return make_config(workspace, tiny_model_dir,
                       **{"storage.allowed_roots": [str(workspace), str(eval_models["root"])]})
