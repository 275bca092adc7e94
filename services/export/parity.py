"""The proof that an exported model computes what the PyTorch model computes.

Three checks on a few chat-templated sample prompts (Chinese and English):
1. Logits along a whole greedy continuation, teacher-forced. For ONNX this runs the prompt
   through the graph with an empty KV cache, then feeds the continuation one token at a
   time through the cache the graph returned, so both the prefill and the cached decode
   path are compared with a cache-free PyTorch forward over the same tokens.
2. Logits of all prompts in one left-padded batch (attention mask and position ids matter).
3. Greedy generation through the deployment path (`ORTModelForCausalLM.generate` for ONNX,
   `AutoModelForCausalLM` reloaded from disk for safetensors) must give PyTorch's tokens.

The reference outputs are computed once from the in-memory PyTorch model (`reference_outputs`)
and compared with any candidate (`check_onnx`, `check_transformers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SAMPLE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "你好，请介绍一下你自己。"},),
    ({"role": "user", "content": "What is the capital of France?"},),
    (
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "请把“good morning”翻译成中文。"},
    ),
    (
        {"role": "user", "content": "Say hello in Chinese."},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "And how do I say thank you?"},
    ),
)


@dataclass
class ParityResult:
    """What `check_*` found. `ok` is the verdict for an export held to `tolerance`."""

    max_abs_diff: float
    tolerance: float
    tokens_match: bool
    prompts_checked: int
    tokens_per_prompt: int
    token_agreement: float
    mismatches: list[str] = field(default_factory=list)

    @property
    def logits_ok(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    @property
    def ok(self) -> bool:
        return self.logits_ok and self.tokens_match

    def summary(self, enforced: bool = True) -> str:
        """One line with the numbers. `enforced=False` (int8) reports the logits difference
        without comparing it with the fp32 tolerance."""
        if enforced:
            verdict = "<=" if self.logits_ok else ">"
            text = f"logits max |diff| {self.max_abs_diff:.3g} {verdict} tolerance {self.tolerance:.3g}; "
        else:
            text = f"logits max |diff| {self.max_abs_diff:.3g} (reported, not held to the fp32 tolerance); "
        text += (f"greedy tokens {'equal' if self.tokens_match else 'differ'} on {self.prompts_checked} prompts "
                 f"x {self.tokens_per_prompt} tokens (agreement {self.token_agreement:.1%})")
        if self.mismatches:
            text += "; " + "; ".join(self.mismatches[:4])
        return text


@dataclass
class Reference:
    """PyTorch outputs the candidates are compared with."""

    prompts: list[list[int]]
    continuations: list[list[int]]  # greedy tokens after each prompt, exactly `new_tokens` long
    sequence_logits: list[np.ndarray]  # [len(prompt) + new_tokens - 1, vocab] per prompt
    batch_ids: np.ndarray  # [n, max_len] left-padded prompts
    batch_mask: np.ndarray
    batch_logits: np.ndarray  # [n, max_len, vocab]
    new_tokens: int
    pad_token_id: int


def encode_prompts(tokenizer, conversations: Sequence[Sequence[dict]] = SAMPLE_CONVERSATIONS) -> list[list[int]]:
    """Token ids of each conversation with the generation prompt (plain text when the
    tokenizer has no chat template)."""
    out = []
    for conv in conversations:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer("\n".join(m["content"] for m in conv))["input_ids"]
        out.append([int(i) for i in ids])
    return out


def _pad_token_id(tokenizer, model_config) -> int:
    for cand in (getattr(tokenizer, "pad_token_id", None), getattr(model_config, "pad_token_id", None),
                 getattr(tokenizer, "eos_token_id", None)):
        if isinstance(cand, int):
            return cand
    return 0


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    return ids, mask


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """Positions as transformers' generate computes them for left-padded batches."""
    pos = np.cumsum(mask, axis=-1) - 1
    pos[mask == 0] = 1
    return pos.astype(np.int64)


def generation_kwargs(new_tokens: int, pad_token_id: int) -> dict[str, Any]:
    # min_new_tokens keeps the end-of-turn token from cutting the check short: every prompt
    # compares exactly `new_tokens` greedy tokens.
    return dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=pad_token_id, num_beams=1)


def reference_outputs(model, tokenizer, *, new_tokens: int = 16,
                      conversations: Sequence[Sequence[dict]] = SAMPLE_CONVERSATIONS) -> Reference:
    """Greedy continuations and logits of the PyTorch `model` (eval mode, CPU)."""
    import torch

    pad_id = _pad_token_id(tokenizer, model.config)
    prompts = encode_prompts(tokenizer, conversations)
    continuations, seq_logits = [], []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **generation_kwargs(new_tokens, pad_id))
            cont = out[0, len(p):].tolist()
            continuations.append(cont)
            seq_logits.append(_torch_sequence_logits(model, p, cont))
        batch_ids, batch_mask = _left_pad(prompts, pad_id)
        batch_logits = _torch_batch_logits(model, batch_ids, batch_mask)
    return Reference(prompts, continuations, seq_logits, batch_ids, batch_mask, batch_logits, new_tokens, pad_id)


def _torch_sequence_logits(model, prompt: list[int], continuation: list[int]) -> np.ndarray:
    import torch

    full = prompt + continuation[:-1]
    ids = torch.tensor([full], dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    return logits[0].float().numpy()


def _torch_batch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       position_ids=torch.from_numpy(position_ids_from_mask(mask)), use_cache=False).logits
    return logits.float().numpy()


def _compare(ref: Reference, seq_logits: list[np.ndarray], batch_logits: np.ndarray,
             generated: list[list[int]], tolerance: float) -> ParityResult:
    pairs = list(zip(ref.sequence_logits, seq_logits))
    real = ref.batch_mask.astype(bool)
    pairs.append((ref.batch_logits[real], batch_logits[real] if batch_logits.shape == ref.batch_logits.shape else batch_logits))
    diff = 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            return ParityResult(math.inf, tolerance, False, len(ref.prompts), ref.new_tokens, 0.0,
                                [f"logits shape {b.shape} != PyTorch {a.shape}"])
        d = float(np.max(np.abs(a - b)))
        diff = max(diff, d if math.isfinite(d) else math.inf)  # NaN would slip through max()
    mismatches, agree, total = [], 0, 0
    for i, (want, got) in enumerate(zip(ref.continuations, generated)):
        total += len(want)
        agree += sum(1 for k, t in enumerate(want) if k < len(got) and got[k] == t)
        if want != got:
            k = next((k for k in range(len(want)) if k >= len(got) or got[k] != want[k]), len(want))
            mine = got[k] if k < len(got) else None
            theirs = want[k] if k < len(want) else None
            mismatches.append(f"prompt {i + 1}: first different token at step {k + 1} "
                              f"(PyTorch {theirs}, export {mine})")
    return ParityResult(
        max_abs_diff=diff, tolerance=tolerance, tokens_match=not mismatches,
        prompts_checked=len(ref.prompts), tokens_per_prompt=ref.new_tokens,
        token_agreement=(agree / total) if total else 1.0, mismatches=mismatches,
    )


# -- ONNX Runtime -----------------------------------------------------------------------------

def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    if threads and threads > 0:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


class OrtKVDecoder:
    """Runs an exported `text-generation-with-past` graph with its KV cache, using only the
    inputs and outputs the graph declares."""

    def __init__(self, model_file: Path, threads: int | None = None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model_file), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.present_names = ["present." + n[len("past_key_values."):] for n in self.past_names]
        missing = [n for n in ("input_ids", "logits") if n not in self.inputs and n not in self.outputs]
        unknown = set(self.inputs) - {"input_ids", "attention_mask", "position_ids", *self.past_names}
        if missing or unknown or any(n not in self.outputs for n in self.present_names):
            raise ValueError(f"unexpected graph signature: inputs {list(self.inputs)}, outputs {self.outputs}")
        self.float_type = np.float16 if self.past_names and "float16" in self.inputs[self.past_names[0]].type else np.float32

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        past = {}
        for name in self.past_names:
            shape = self.inputs[name].shape  # e.g. ['batch_size', 2, 'past_sequence_length', 48]
            heads, head_dim = shape[1], shape[3]
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise ValueError(f"{name} has no static head dims: {shape}")
            past[name] = np.zeros((batch, heads, 0, head_dim), dtype=self.float_type)
        return past

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward: logits for `ids` and the grown cache."""
        feed = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self.inputs:
            feed["position_ids"] = positions
        feed.update(past)
        names = ["logits", *self.present_names]
        values = self.session.run(names, feed)
        return values[0], dict(zip(self.past_names, values[1:]))

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """Logits of the prompt (prefill) and then of each continuation token but the last,
        fed one at a time through the cache."""
        ids = np.array([prompt], dtype=np.int64)
        mask = np.ones_like(ids)
        logits, past = self.step(ids, mask, np.arange(len(prompt), dtype=np.int64)[None], self.empty_past(1))
        rows = [logits[0]]
        length = len(prompt)
        for tok in continuation[:-1]:
            mask = np.ones((1, length + 1), dtype=np.int64)
            logits, past = self.step(np.array([[tok]], dtype=np.int64), mask, np.array([[length]], dtype=np.int64), past)
            rows.append(logits[0])
            length += 1
        return np.concatenate(rows, axis=0).astype(np.float32)

    def batch_logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        logits, _ = self.step(ids, mask, position_ids_from_mask(mask), self.empty_past(ids.shape[0]))
        return logits.astype(np.float32)

    def greedy(self, prompt: list[int], new_tokens: int, eos_ids: Sequence[int] = ()) -> list[int]:
        """Greedy decoding with the cache (stops early at an eos id when given)."""
        ids = np.array([prompt], dtype=np.int64)
        logits, past = self.step(ids, np.ones_like(ids), np.arange(len(prompt), dtype=np.int64)[None], self.empty_past(1))
        out, length = [], len(prompt)
        while True:
            tok = int(np.argmax(logits[0, -1]))
            out.append(tok)
            if len(out) >= new_tokens or tok in eos_ids:
                return out
            logits, past = self.step(np.array([[tok]], dtype=np.int64), np.ones((1, length + 1), dtype=np.int64),
                                     np.array([[length]], dtype=np.int64), past)
            length += 1


def load_ort_causal_lm(folder: Path, file_name: str, threads: int | None = None):
    """optimum's ORTModelForCausalLM on an exported folder (what deployments use)."""
    from optimum.onnxruntime import ORTModelForCausalLM

    return ORTModelForCausalLM.from_pretrained(
        str(folder), file_name=file_name, provider="CPUExecutionProvider",
        session_options=session_options(threads), use_cache=True, use_io_binding=False,
    )


def check_onnx(ref: Reference, folder: Path, file_name: str, tolerance: float) -> ParityResult:
    """Compare an exported model (`folder/file_name`) with the reference. Raises whatever
    ONNX Runtime raises when the model cannot be loaded or run."""
    import torch

    decoder = OrtKVDecoder(folder / file_name)
    seq = [decoder.teacher_forced_logits(p, c) for p, c in zip(ref.prompts, ref.continuations)]
    batch = decoder.batch_logits(ref.batch_ids, ref.batch_mask)
    del decoder
    ort_model = load_ort_causal_lm(folder, file_name)
    generated = []
    with torch.inference_mode():
        for p in ref.prompts:
            ids = torch.tensor([p], dtype=torch.long)
            out = ort_model.generate(ids, attention_mask=torch.ones_like(ids),
                                     **generation_kwargs(ref.new_tokens, ref.pad_token_id))
            generated.append(out[0, len(p):].tolist())
    del ort_model
    return _compare(ref, seq, batch, generated, tolerance)


def check_transformers(ref: Reference, folder: Path, tolerance: float, *, trust_remote_code: bool = False) -> ParityResult:
    """Reload a saved Hugging Face folder (safetensors) and compare it with the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    seq = [_torch_sequence_logits(model, p, c) for p, c in zip(ref.prompts, ref.continuations)]
    batch = _torch_batch_logits(model, ref.batch_ids, ref.batch_mask)
    generated = []
    with torch.inference_mode():
        for p in ref.prompts:
            ids = torch.tensor([p], dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **generation_kwargs(ref.new_tokens, ref.pad_token_id))
            generated.append(out[0, len(p):].tolist())
    del model
    return _compare(ref, seq, batch, generated, tolerance)
