"""Continuous batching: one step-level scheduler thread per loaded model.

Every sequence of every request (Chat, ChatStream, Batch, `/v1/chat/completions`, each of
`n` choices) is a row of one running batch. The rows share one `DynamicCache` whose rows are
left-padded to a common length; an attention mask hides each row's padding and each row
carries its own position ids, so a row computes what it would compute alone.

- A new sequence is prefilled alone (its prompt, batch of one) and merged into the running
  batch at the next step boundary (its keys/values left-padded, or the batch's, to the longer).
- Each decoding step is one forward over all rows (one new token per row); each row is then
  sampled with its own settings (temperature, top_p, top_k, repetition / frequency / presence
  penalty, logit_bias, min_tokens) and its own `torch.Generator`, so a seeded row gives the
  same text whatever else is in the batch.
- A row that finishes (end of turn, stop sequence, max_tokens) or is cancelled (its
  `RunControl`: client gone, deadline) leaves the batch at once; padding columns no row needs
  any more are trimmed.
- Rows of models that share one `nn.Module` (PEFT multi-adapter: `loaded.adapter_name`) share
  one scheduler; the forward then gets `adapter_names=[...]`, one per row ("__base__" for none).

The thread runs while there is work and ends when the batch is empty (a later request starts
a new one), so an unloaded model is not held by an idle scheduler.

transformers' own continuous batching (`generation.continuous_batching`, 4.57) was evaluated
first: its `add_request` takes one generation config for the whole manager (no per-request
sampling or seed) and on CPU its paged cache fails while sizing memory (`get_available_memory`
reads CUDA totals), so the generation loop dies and requests hang.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("wintrain.inference")

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class TokenLogprob:
    """One generated token with its log-probability (and, when asked, the most likely ones)."""

    token: str
    logprob: float
    token_bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Sequence:
    """One row: a prompt to continue with its own settings. Filled in by the scheduler:
    `ids` (new tokens, an ending eos included), `logprobs`, `finish_reason`, `error`."""

    prompt: list[int]
    params: Any  # engine.SamplingParams
    control: Any  # engine.RunControl
    decoder: Any  # engine.StreamingDecoder (stop sequences, streamed text) or None (neither)
    adapter: str | None = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancel"
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # scheduler state
    generator: Any = None
    last: int = -1
    pos: int = 0
    counts: Any = None  # token counts of the generated ids (frequency / presence penalty)


def _token_bytes(tokenizer, tid: int) -> list[int]:
    """The raw bytes of one token (byte-level BPE vocabularies map bytes to printable chars)."""
    global _BYTE_DECODER
    piece = tokenizer.convert_ids_to_tokens(int(tid))
    if piece is None:
        return []
    if _BYTE_DECODER is None:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        _BYTE_DECODER = {c: b for b, c in bytes_to_unicode().items()}
    if all(c in _BYTE_DECODER for c in piece):
        return [_BYTE_DECODER[c] for c in piece]
    return list(tokenizer.decode([int(tid)], skip_special_tokens=False).encode("utf-8"))


_BYTE_DECODER: dict[str, int] | None = None


class Scheduler:
    """The running batch of one model. `submit` from any thread; one thread steps it."""

    def __init__(self, loaded, max_rows: int, on_idle: Callable[["Scheduler"], None]):
        self.loaded = loaded
        self.model = loaded.model
        self.max_rows = max(1, int(max_rows))
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self._pending: collections.deque[Sequence] = collections.deque()
        self._thread: threading.Thread | None = None
        self.steps = 0  # decoding steps run (tests and benches read it)
        self.max_rows_seen = 0  # the widest batch stepped so far

    # -- public --------------------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> bool:
        """Queue rows; False when this scheduler has already stopped (get a new one)."""
        with self._lock:
            if self._thread is False:  # type: ignore[comparison-overlap]
                return False
            self._pending.extend(seqs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wintrain-batch", daemon=True)
                self._thread.start()
        return True

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        self._torch = torch
        self._rows: list[Sequence] = []
        self._cache = None
        self._mask = None
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        if not self._rows and not self._pending:
                            self._thread = False  # stopped: later submits get a new scheduler
                            break
                        if self._pending:  # a queued row whose client left never waits for a place
                            for seq in [s for s in self._pending if s.control.should_stop()]:
                                self._pending.remove(seq)
                                self._end(seq, "cancel")
                        room = self.max_rows - len(self._rows)
                        new = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
                    try:
                        for seq in new:
                            self._admit(seq)
                        self._drop_stopped()
                        if self._rows:
                            self._step()
                    except BaseException as exc:  # noqa: BLE001 - every waiting row gets the error
                        log.exception("batched generation failed")
                        for seq in self._rows + [s for s in new if not s.done.is_set()]:
                            self._end(seq, None, exc)
                        self._rows, self._cache, self._mask = [], None, None
        finally:
            self._on_idle(self)

    def _forward(self, input_ids, attention_mask, position_ids, cache, adapters: list[str | None]):
        kwargs = {}
        if any(a is not None for a in adapters):
            kwargs["adapter_names"] = [a or BASE_ADAPTER for a in adapters]
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float(), out.past_key_values

    def _admit(self, seq: Sequence) -> None:
        """Prefill one new row alone, sample its first token, merge it into the batch."""
        torch = self._torch
        if seq.control.should_stop():
            self._end(seq, "cancel")
            return
        device = next(self.model.parameters()).device
        n = len(seq.prompt)
        ids = torch.tensor([seq.prompt], dtype=torch.long, device=device)
        mask = torch.ones((1, n), dtype=torch.long, device=device)
        pos = torch.arange(n, device=device).unsqueeze(0)
        from transformers import DynamicCache

        logits, cache = self._forward(ids, mask, pos, DynamicCache(config=self.model.config), [seq.adapter])
        params = seq.params
        if not params.greedy:
            seq.generator = torch.Generator(device=logits.device)
            seq.generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        seq.pos = n
        try:
            alive = self._take(seq, self._pick(seq, logits[0]))
        except Exception as exc:  # noqa: BLE001 - only this row ends
            self._end(seq, None, exc)
            return
        if not alive:
            return
        if self._cache is None:
            self._rows, self._cache, self._mask = [seq], cache, mask
            return
        width = self._mask.shape[1]
        if n < width:
            cache_pad(torch, cache, width - n)
            mask = torch.cat([mask.new_zeros((1, width - n)), mask], dim=1)
        elif n > width:
            cache_pad(torch, self._cache, n - width)
            self._mask = torch.cat([self._mask.new_zeros((self._mask.shape[0], n - width)), self._mask], dim=1)
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self._mask = torch.cat([self._mask, mask], dim=0)
        self._rows.append(seq)

    def _step(self) -> None:
        """One decoding step over every row."""
        torch = self._torch
        rows = self._rows
        device = self._mask.device
        ids = torch.tensor([[s.last] for s in rows], dtype=torch.long, device=device)
        pos = torch.tensor([[s.pos] for s in rows], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        logits, self._cache = self._forward(ids, self._mask, pos, self._cache, [s.adapter for s in rows])
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(rows))
        STATS["steps"] += 1
        STATS["peak_rows"] = max(STATS["peak_rows"], len(rows))
        plain = [i for i, s in enumerate(rows) if s.params.plain_greedy and len(s.ids) >= s.params.min_tokens]
        picked: dict[int, int] = {}
        if plain:
            best = logits[plain].argmax(dim=-1).tolist()
            picked = dict(zip(plain, best))
        keep = []
        for i, seq in enumerate(rows):
            seq.pos += 1
            try:
                tid = picked[i] if i in picked else self._pick(seq, logits[i])
                alive = self._take(seq, tid)
            except Exception as exc:  # noqa: BLE001 - this row's own settings failed (e.g. a logits hook): only it ends
                self._end(seq, None, exc)
                alive = False
            if alive:
                keep.append(i)
        if len(keep) < len(rows):
            self._select(keep)

    def _drop_stopped(self) -> None:
        keep = []
        for i, seq in enumerate(self._rows):
            if seq.control.should_stop():
                self._end(seq, "cancel")
            else:
                keep.append(i)
        if len(keep) < len(self._rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Keep these rows (in order) and trim padding columns nobody needs any more."""
        torch = self._torch
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self._mask = self._mask.index_select(0, index)
        first = int(self._mask.any(dim=0).to(torch.int8).argmax())
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]
        if first:
            self._mask = self._mask[:, first:]

    # -- one row's token -----------------------------------------------------------------
    def _pick(self, seq: Sequence, logits):
        """The next token of one row from its logits (V,), with its own settings."""
        torch = self._torch
        p = seq.params
        scores = logits
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(seq.prompt + seq.ids, dtype=torch.long, device=scores.device).unique()
            vals = scores.index_select(0, seen)
            vals = torch.where(vals < 0, vals * p.repetition_penalty, vals / p.repetition_penalty)
            scores = scores.index_copy(0, seen, vals)
        if (p.frequency_penalty or p.presence_penalty) and seq.ids:
            counts = torch.bincount(torch.tensor(seq.ids, dtype=torch.long, device=scores.device),
                                    minlength=scores.shape[0])[: scores.shape[0]].to(scores.dtype)
            scores = scores - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(scores.dtype)
        if p.logit_bias:
            idx = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long, device=scores.device)
            scores = scores.index_add(0, idx, torch.tensor([b for _, b in p.logit_bias], dtype=scores.dtype,
                                                           device=scores.device))
        if len(seq.ids) < p.min_tokens:
            scores = scores.clone()
            scores[list(self.loaded.eos_ids)] = float("-inf")
        if p.logits_hook is not None:
            scores = p.logits_hook(list(seq.ids), scores)
        if p.greedy:
            tid = int(scores.argmax())
        else:
            s = scores / p.temperature
            if p.top_k > 0 and p.top_k < s.shape[0]:
                kth = torch.topk(s, p.top_k).values[-1]
                s = s.masked_fill(s < kth, float("-inf"))
            if p.top_p < 1.0:
                # As transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p.
                sorted_s, order = torch.sort(s, descending=False)
                cum = sorted_s.softmax(dim=-1).cumsum(dim=-1)
                remove = cum <= (1 - p.top_p)
                remove[-1] = False
                s = s.masked_fill(remove.scatter(0, order, remove), float("-inf"))
            probs = torch.softmax(s, dim=-1)
            tid = int(torch.multinomial(probs.unsqueeze(0), 1, generator=seq.generator)[0, 0])
        if p.logprobs:
            self._record_logprob(seq, scores, tid)
        return tid

    def _record_logprob(self, seq: Sequence, scores, tid: int) -> None:
        torch = self._torch
        tok = self.loaded.tokenizer
        logp = torch.log_softmax(scores, dim=-1)
        top = []
        if seq.params.top_logprobs:
            vals, idx = torch.topk(logp, seq.params.top_logprobs)
            top = [(tok.decode([int(i)]), float(v), _token_bytes(tok, int(i))) for v, i in zip(vals, idx)]
        seq.logprobs.append(TokenLogprob(tok.decode([tid]), float(logp[tid]), _token_bytes(tok, tid), top))

    def _take(self, seq: Sequence, tid: int) -> bool:
        """Record a row's new token; False when the row has ended (it was finished)."""
        seq.control.generated += 1
        if tid in self.loaded.eos_ids:
            seq.ids.append(tid)
            if seq.logprobs:
                seq.logprobs.pop()  # the end of turn is not part of the answer's text
            self._end(seq, "stop")
            return False
        seq.ids.append(tid)
        seq.last = tid
        if seq.decoder is not None:
            seq.decoder.add([tid])
            if seq.decoder.stopped:
                self._end(seq, "stop")
                return False
        if len(seq.ids) >= seq.params.max_tokens:
            self._end(seq, "length")
            return False
        return True

    def _end(self, seq: Sequence, reason: str | None, error: BaseException | None = None) -> None:
        if seq.done.is_set():
            return
        seq.finish_reason = reason
        seq.error = error
        if reason in ("stop", "length") and seq.decoder is not None:
            try:
                seq.decoder.finish()
            except BaseException as exc:  # noqa: BLE001 - the sink failed (loop closed): the row still ends
                seq.error = exc
        seq.done.set()


def cache_pad(torch, cache, n: int) -> None:
    """Left-pad every layer of a cache with n zero positions (masked out by the caller)."""
    for layer in cache.layers:
        b, h, _l, d = layer.keys.shape
        layer.keys = torch.cat([layer.keys.new_zeros((b, h, n, d)), layer.keys], dim=2)
        layer.values = torch.cat([layer.values.new_zeros((b, h, n, layer.values.shape[3])), layer.values], dim=2)


# -- one scheduler per model object --------------------------------------------------------

# Over all models since start (tests and benches reset and read it): decoding steps run, and
# the widest batch one step decoded.
STATS = {"steps": 0, "peak_rows": 0}

_LOCK = threading.Lock()
_SCHEDULERS: dict[int, Scheduler] = {}


def _forget(s: Scheduler) -> None:
    with _LOCK:
        if _SCHEDULERS.get(id(s.model)) is s:
            del _SCHEDULERS[id(s.model)]


def submit(loaded, seqs: list[Sequence], max_rows: int) -> None:
    """Queue rows on the scheduler of `loaded.model` (started if idle)."""
    while True:
        with _LOCK:
            s = _SCHEDULERS.get(id(loaded.model))
            if s is None:
                s = _SCHEDULERS[id(loaded.model)] = Scheduler(loaded, max_rows, _forget)
        if s.submit(seqs):
            return
        _forget(s)


def current(loaded) -> Scheduler | None:
    """The running scheduler of a model, if any (tests and benches)."""
    with _LOCK:
        return _SCHEDULERS.get(id(loaded.model))
