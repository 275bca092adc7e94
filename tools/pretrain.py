"""Pre-train the embedded tiny chat model (``make model-train``), deterministically, on CPU.

A plain PyTorch loop, not the project's TRL trainer: on two shared CPU cores the TRL/SFT
machinery (dataset mapping, collators, callbacks, checkpoints) costs more than the model
itself, and this run has to do a few thousand small steps. What it trains is the same thing
the services serve: the tokenizer and `Qwen2ForCausalLM` of `tools.tiny_model`, with its
ChatML template.

Data (all bundled, nothing downloaded): every conversation of ``datasets/bilingual_chat.jsonl``
(360 Chinese/English chats, single- and multi-turn, some with a system message), rendered with
the chat template and cut at ``MAX_LENGTH`` tokens. The loss is on the assistant turns, their
``<|im_end|>`` included, so the model learns to stop (system/user tokens weigh
``PROMPT_WEIGHT``). ``PROSE_FILES`` may add ``corpus/*.txt`` paragraphs as plain text; the
recipe leaves them out, as the chat set already holds the same prose and two shared cores
buy more from more epochs. ``qa_facts.jsonl`` is left out on purpose: the demo shows a LoRA
run teaching it.

Determinism: fixed seeds, a fixed thread count and ``torch.use_deterministic_algorithms``;
the same torch build on the same CPU gives the same weights. The weights are committed as
float16 safetensors under ``services/common/assets/tiny_model/`` with a recipe stamp (a
hash of this script, the corpus, the chat set and the tokenizer), so `make model` only
copies them and a test fails when the recipe changes without a retrain.

    python -m tools.pretrain                  # train and write the assets (minutes)
    python -m tools.pretrain --check          # is the committed stamp the current recipe?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

from tools import tiny_model as tm

WEIGHTS_DIR = tm.ASSETS_DIR / "tiny_model"
WEIGHTS_FILE = WEIGHTS_DIR / "model.fp16.safetensors"
RECIPE_FILE = WEIGHTS_DIR / "recipe.json"
CHAT_DATASET = tm.DATASETS_DIR / "bilingual_chat.jsonl"
PROSE_FILES: tuple[str, ...] = ()  # corpus/*.txt files trained on as plain text too

# The recipe. Changing any of it changes the stamp.
SEED = 1234
THREADS = 1  # also on a busy machine one thread wastes nothing on waiting for the other
EPOCHS = 80  # the length of the learning-rate schedule ...
STOP_AFTER_EPOCHS = 30  # ... of which this many are run (two shared cores: ~20 min)
BATCH_SIZE = 8
MAX_LENGTH = 80  # tokens per conversation; the first answers' beginnings fit, long tails are cut
LR = 2e-3  # measured: 1e-2 stalls at a loss of ~4.3 after 950 steps; 1e-3..3e-3 get there in 200
MIN_LR_RATIO = 0.05
WARMUP_STEPS = 40
WEIGHT_DECAY = 0.0
GRAD_CLIP = 1.0
PROMPT_WEIGHT = 0.0


# -- the recipe stamp ------------------------------------------------------------------------

def recipe_stamp(tokenizer=None, *, epochs: int = EPOCHS, lr: float = LR) -> str:
    """sha256 of everything the weights are a function of: this script (its constants
    included), the epochs run, the training data, the model config and the tokenizer the
    build trains (its serialized form)."""
    tokenizer = tokenizer or tm.train_tokenizer()
    h = hashlib.sha256()

    def add(name: str, data: bytes) -> None:
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    add("pretrain.py", Path(__file__).read_bytes())
    add("epochs", str(epochs).encode())
    add("stop_after", str(STOP_AFTER_EPOCHS).encode())
    add("lr", repr(float(lr)).encode())
    add("bilingual_chat.jsonl", CHAT_DATASET.read_bytes())
    for name in PROSE_FILES:
        add(name, (tm.CORPUS_DIR / name).read_bytes())
    add("model_config", json.dumps(tm.MODEL_CONFIG, sort_keys=True).encode())
    add("tokenizer.json", tokenizer.backend_tokenizer.to_str().encode())
    add("chat_template", tm.CHAT_TEMPLATE.encode())
    return h.hexdigest()


def committed_recipe() -> dict | None:
    try:
        return json.loads(RECIPE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- data ------------------------------------------------------------------------------------

def chat_rows() -> list[list[dict]]:
    return [json.loads(line)["conversations"] for line in CHAT_DATASET.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def build_examples(tokenizer) -> list[tuple[list[int], list[float]]]:
    """(token ids, per-token loss weights of the *next*-token targets at each position)."""
    examples = []
    for conv in chat_rows():
        enc = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = enc["input_ids"][:MAX_LENGTH], enc["assistant_masks"][:MAX_LENGTH]
        examples.append((ids, [1.0 if m else PROMPT_WEIGHT for m in mask]))
    eot = tokenizer.convert_tokens_to_ids(tm.ENDOFTEXT)
    for name in PROSE_FILES:
        text = (tm.CORPUS_DIR / name).read_text(encoding="utf-8")
        for para in text.split("\n\n"):
            if not para.strip():
                continue
            ids = tokenizer(para.strip())["input_ids"] + [eot]
            for start in range(0, len(ids), MAX_LENGTH):
                chunk = ids[start:start + MAX_LENGTH]
                if len(chunk) > 1:
                    examples.append((chunk, [1.0] * len(chunk)))
    return examples


def batches(examples, rng: random.Random):
    """One epoch: shuffled, then length-bucketed within groups of 8 batches (less padding)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    group = BATCH_SIZE * 8
    out = []
    for g in range(0, len(order), group):
        chunk = sorted(order[g:g + group], key=lambda i: len(examples[i][0]))
        out += [chunk[b:b + BATCH_SIZE] for b in range(0, len(chunk), BATCH_SIZE)]
    rng.shuffle(out)
    return out


def collate(examples, idx, pad_id):
    import torch

    width = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(idx), width), dtype=torch.long)
    wts = torch.zeros((len(idx), width), dtype=torch.float32)
    for row, i in enumerate(idx):
        toks, w = examples[i]
        ids[row, :len(toks)] = torch.tensor(toks)
        att[row, :len(toks)] = 1
        wts[row, :len(toks)] = torch.tensor(w)
    return ids, att, wts


# -- what the model must do: answer the chat set's openings --------------------------------

SENTENCE_END = (".", "!", "?", "。", "！", "？")


def unique_openings() -> list[tuple[list[dict], str]]:
    """(opening, answer) for each opening (the system message if any, then the first user
    message) that the chat set answers in exactly one way."""
    answers: dict[str, set[str]] = {}
    prompts: dict[str, list[dict]] = {}
    for conv in chat_rows():
        n = 2 if conv[0]["role"] == "system" else 1
        opening = conv[:n]
        key = json.dumps(opening, ensure_ascii=False)
        prompts[key] = opening
        answers.setdefault(key, set()).add(conv[n]["content"])
    return [(prompts[k], next(iter(a))) for k, a in answers.items() if len(a) == 1]


def greedy_answers(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int,
                   batch_size: int = 32) -> list[list[int]]:
    """Greedy new token ids for each conversation (up to and including the eos when one
    comes), generated in left-padded batches."""
    import torch

    eos = tokenizer.convert_tokens_to_ids(tm.IM_END)
    rendered = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in prompts]
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    out: list[list[int]] = [[] for _ in rendered]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rendered[i]) for i in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(rendered[i])) + rendered[i] for i in chunk])
        att = torch.tensor([[0] * (width - len(rendered[i])) + [1] * len(rendered[i]) for i in chunk])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_model_defaults=False)
        for i, row in zip(chunk, gen[:, width:].tolist()):
            out[i] = row[:row.index(eos) + 1] if eos in row else row
    return out


def answer_matches(tokenizer, opening: list[dict], answer: str, new_ids: list[int]) -> bool:
    """True when `new_ids` are the answer's tokens and its <|im_end|>, or the beginning of
    them cut by max_new_tokens, or a beginning that is whole sentences followed by
    <|im_end|> (a long answer's first sentences)."""
    eos = tokenizer.convert_tokens_to_ids(tm.IM_END)
    prompt = tokenizer.apply_chat_template(opening, add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(opening + [{"role": "assistant", "content": answer}], tokenize=True)
    target = full[len(prompt):]
    target = target[:target.index(eos) + 1]
    if not new_ids:
        return False
    if new_ids == target[:len(new_ids)]:
        return True
    body = new_ids[:-1]
    return (new_ids[-1] == eos and len(body) > 0 and body == target[:len(body)]
            and tokenizer.decode(body).rstrip().endswith(SENTENCE_END))


def score_openings(model, tokenizer, *, max_new_tokens: int = 48) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of the unique openings answered right, and the misses (opening, answer, got)."""
    pairs = unique_openings()
    got = greedy_answers(model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens)
    misses = [(p[-1]["content"], a, tokenizer.decode(g)) for (p, a), g in zip(pairs, got)
              if not answer_matches(tokenizer, p, a, g)]
    return 1 - len(misses) / len(pairs), misses


# -- training --------------------------------------------------------------------------------

def train(*, epochs: int = EPOCHS, lr: float = LR, log=print, snapshot_dir: Path | None = None):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    tokenizer = tm.train_tokenizer()
    model = tm.make_model(tokenizer, seed=SEED)
    model.train()
    examples = build_examples(tokenizer)
    rng = random.Random(SEED)
    pad_id = tokenizer.pad_token_id
    steps_per_epoch = len(batches(examples, random.Random(0)))
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=WEIGHT_DECAY)

    def lr_at(step: int) -> float:
        if step < WARMUP_STEPS:
            return lr * (step + 1) / WARMUP_STEPS
        p = (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)
        return lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * p)))

    log(f"{len(examples)} sequences, {sum(len(e[0]) for e in examples)} tokens, {steps_per_epoch} steps/epoch, "
        f"a schedule of {total} steps of which {steps_per_epoch * min(epochs, STOP_AFTER_EPOCHS)} run, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    started, step = time.perf_counter(), 0
    for epoch in range(min(epochs, STOP_AFTER_EPOCHS)):
        tot_loss, tot_w = 0.0, 0.0
        for idx in batches(examples, rng):
            ids, att, wts = collate(examples, idx, pad_id)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
            target, w = ids[:, 1:], wts[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
            loss = (nll * w.reshape(-1)).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            tot_loss += float((nll * w.reshape(-1)).sum().detach())
            tot_w += float(w.sum())
            step += 1
        log(f"epoch {epoch + 1}/{min(epochs, STOP_AFTER_EPOCHS)} (of a {epochs}-epoch schedule) "
            f"loss {tot_loss / tot_w:.4f} ({time.perf_counter() - started:.0f}s)")
        if snapshot_dir is not None and (epoch + 1) % 5 == 0:
            save_weights(model, Path(snapshot_dir) / f"epoch{epoch + 1}.safetensors")
    model.eval()
    return tokenizer, model, time.perf_counter() - started


def save_weights(model, path: Path = WEIGHTS_FILE) -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}  # tied to the embeddings
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the committed stamp with the recipe")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="(experiments only; the stamp records it)")
    parser.add_argument("--lr", type=float, default=LR, help="(experiments only; the stamp records it)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="(experiments) where to write the weights")
    parser.add_argument("--snapshots", type=Path, help="(experiments) save the weights every 5 epochs there")
    args = parser.parse_args(argv)
    if args.check:
        have, want = (committed_recipe() or {}).get("stamp"), recipe_stamp(epochs=args.epochs, lr=args.lr)
        print(f"committed {have}\nrecipe    {want}")
        return 0 if have == want else 1
    tokenizer, model, seconds = train(epochs=args.epochs, lr=args.lr, snapshot_dir=args.snapshots)
    weights = args.out / WEIGHTS_FILE.name
    save_weights(model, weights)
    # Score what is committed: the float16 weights, widened again as the build does.
    committed = tm.load_pretrained(tm.make_model(tokenizer), path=weights, check_stamp=False)
    score, misses = score_openings(committed, tokenizer)
    for opening, answer, got in misses:
        print(f"miss: {opening!r}\n  want {answer[:80]!r}\n  got  {got[:80]!r}")
    record = {"stamp": recipe_stamp(tokenizer, epochs=args.epochs, lr=args.lr), "epochs": args.epochs,
              "epochs_run": min(args.epochs, STOP_AFTER_EPOCHS), "lr": args.lr,
              "train_seconds": round(seconds, 1), "openings_score": round(score, 4),
              "torch": __import__("torch").__version__}
    (args.out / RECIPE_FILE.name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"openings answered: {score:.1%}; wrote {weights} after {seconds:.0f}s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
