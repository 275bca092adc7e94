"""Generation: chat templates, sampling, stop sequences, seeds, KV-cached streaming, batches.

Everything here blocks and runs in a worker thread. One request is one `model.generate` call
(with its KV cache): streaming hooks a streamer into that call, a batch pads prompts on the
left and generates a chunk of them at once. A `RunControl` shared with the request handler
stops a generation within one decoding step when the client cancels or the deadline passes.

Sampling never touches torch's global RNG: a logits processor samples with the request's own
`torch.Generator`, so a seed gives the same output even while other requests generate
concurrently in other threads.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from services.common.errors import Cancelled, DeadlineExceeded, FailedPrecondition, InvalidArgument

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 16
REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 byte sequence decodes to
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How to generate. `temperature == 0` is greedy decoding."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_sampling(
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    cap: int,
    repetition_penalty: float = 1.0,
    min_tokens: int = 0,
    stop: Sequence[str] = (),
    seed: int | None = None,
) -> SamplingParams:
    """Validated SamplingParams. Raises InvalidArgument naming every wrong field."""
    bad: list[tuple[str, str]] = []
    if max_tokens < 1:
        bad.append(("max_tokens", "must be >= 1"))
    elif max_tokens > cap:
        bad.append(("max_tokens", f"must be <= {cap} (inference.max_new_tokens_cap)"))
    if not (temperature >= 0.0) or temperature == float("inf"):  # also catches NaN
        bad.append(("temperature", "must be >= 0 (0 is greedy)"))
    if not (0.0 < top_p <= 1.0):
        bad.append(("top_p", "must be in (0, 1]"))
    if top_k < 0:
        bad.append(("top_k", "must be >= 0 (0: off)"))
    if not (repetition_penalty > 0.0) or repetition_penalty == float("inf"):
        bad.append(("repetition_penalty", "must be > 0 (1: none)"))
    if min_tokens < 0:
        bad.append(("min_tokens", "must be >= 0"))
    elif max_tokens >= 1 and min_tokens > max_tokens:
        bad.append(("min_tokens", "must be <= max_tokens"))
    if len(stop) > MAX_STOP_SEQUENCES:
        bad.append(("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences"))
    for i, s in enumerate(stop):
        if not s:
            bad.append((f"stop[{i}]", "must not be empty"))
    if bad:
        raise InvalidArgument.for_fields(bad)
    return SamplingParams(
        max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
        repetition_penalty=float(repetition_penalty), min_tokens=int(min_tokens), stop=tuple(stop), seed=seed,
    )


def check_messages(messages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Messages as the chat template wants them. Roles: `system` (first only), `user`,
    `assistant`; the last one is the user's. Raises InvalidArgument naming the field."""
    if not messages:
        raise InvalidArgument.for_field("messages", "must not be empty")
    bad = []
    for i, (role, _content) in enumerate(messages):
        if role not in ROLES:
            bad.append((f"messages[{i}].role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}"))
        elif role == "system" and i != 0:
            bad.append((f"messages[{i}].role", "a system message may only come first"))
    if not bad and messages[-1][0] != "user":
        last = len(messages) - 1
        bad.append((f"messages[{last}].role", "the conversation must end with a user message"))
    if bad:
        raise InvalidArgument.for_fields(bad)
    return [{"role": role, "content": content} for role, content in messages]


@dataclass
class Completion:
    """One finished answer."""

    content: str
    thinking: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class RunControl:
    """Shared by a request handler and the thread generating for it: the handler cancels,
    the generation reports progress. Tests read `generated` and `finished`."""

    def __init__(self, request_id: str = "", deadline: float | None = None):
        self.request_id = request_id
        self.deadline = deadline  # time.monotonic() value, or None
        self.cancel_event = threading.Event()
        self.finished = threading.Event()
        self.generated = 0  # new tokens so far (all prompts of a batch together)
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self.stopped_by: str | None = None  # "cancel" | "deadline" when stopped early

    def cancel(self) -> None:
        self.cancel_event.set()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def should_stop(self) -> bool:
        if self.cancel_event.is_set():
            self.stopped_by = self.stopped_by or "cancel"
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_by = self.stopped_by or "deadline"
            return True
        return False

    def raise_if_stopped(self) -> None:
        if self.stopped_by == "deadline":
            raise DeadlineExceeded("deadline exceeded during generation")
        if self.stopped_by == "cancel":
            raise Cancelled("generation cancelled")

    def mark_finished(self) -> None:
        self.finished_at = time.monotonic()
        self.finished.set()


# -- text ----------------------------------------------------------------------------------


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, content). Text before `</think>` (without a leading `<think>`) is thinking;
    an unterminated `<think>` makes everything after it thinking. Text without the markers
    is returned unchanged as content."""
    close = text.find(THINK_CLOSE)
    if close >= 0:
        thinking = text[:close]
        open_at = thinking.find(THINK_OPEN)
        if open_at >= 0:
            thinking = thinking[open_at + len(THINK_OPEN):]
        return thinking.strip("\n"), text[close + len(THINK_CLOSE):].lstrip("\n")
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        return stripped[len(THINK_OPEN):].strip("\n"), ""
    return "", text


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop sequence in text[start:], or -1."""
    best = -1
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _held_back(text: str, start: int, stops: Sequence[str]) -> int:
    """Length of the longest end of text[start:] that may still grow into a stop sequence."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - start), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class StreamingDecoder:
    """Turns token ids, one step at a time, into pieces of whole-character text.

    Incremental detokenisation with a sliding window (as in text-generation-inference): the
    text of the new ids is emitted only once it no longer ends in U+FFFD, i.e. once every
    multi-byte character is complete. Text that could be the start of a stop sequence is held
    back until it is known not to be one; at a stop sequence the stream ends. Empty pieces are
    never emitted. The concatenation of the pieces equals the unary answer (`finish()`)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None], eos_ids: Sequence[int] = (), stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.eos_ids = set(eos_ids)
        self.stops = tuple(stops)
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # stable decoded text so far
        self.sent = 0  # characters of self.text emitted
        self.stopped = False
        self._ended = False

    def add(self, token_ids: Sequence[int]) -> None:
        if self.stopped or self._ended:
            return
        for tid in token_ids:
            if tid in self.eos_ids:
                self._ended = True
                break
            self.ids.append(int(tid))
        prefix = _decode(self.tokenizer, self.ids[self._prefix_offset:self._read_offset])
        new = _decode(self.tokenizer, self.ids[self._prefix_offset:])
        if len(new) > len(prefix) and not new.endswith(REPLACEMENT_CHAR):
            self.text += new[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            self._emit(final=False)

    def finish(self) -> None:
        """Flush what is left (a dangling partial character is dropped, as in the unary answer)."""
        if not self.stopped:
            prefix = _decode(self.tokenizer, self.ids[self._prefix_offset:self._read_offset])
            new = _decode(self.tokenizer, self.ids[self._prefix_offset:])
            if len(new) > len(prefix):
                self.text += new[len(prefix):].rstrip(REPLACEMENT_CHAR)
            self._prefix_offset = self._read_offset = len(self.ids)
            self._emit(final=True)
        self._ended = True

    def _emit(self, final: bool) -> None:
        boundary = len(self.text)
        if self.stops:
            at = first_stop(self.text, self.stops, self.sent)
            if at >= 0:
                boundary = at
                self.stopped = True
            elif not final:
                boundary -= _held_back(self.text, self.sent, self.stops)
        if boundary > self.sent:
            piece = self.text[self.sent:boundary]
            self.sent = boundary
            self.on_text(piece)


def _final_text(tokenizer, new_ids: Sequence[int], stops: Sequence[str]) -> tuple[str, bool]:
    """The unary answer text for generated ids (without eos / padding): decoded, a dangling
    partial character dropped, cut before the first stop sequence. Returns (text, hit_stop)."""
    text = _decode(tokenizer, new_ids).rstrip(REPLACEMENT_CHAR)
    at = first_stop(text, stops) if stops else -1
    return (text[:at], True) if at >= 0 else (text, False)


# -- torch glue ----------------------------------------------------------------------------


def _torch_helpers():
    """Build the transformers hooks lazily (importing torch is slow; this module is imported
    by the server before any model is needed)."""
    import torch
    from transformers import LogitsProcessor, StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class SeededSampler(LogitsProcessor):
        """Samples the next token with a private generator and masks every other one, so
        greedy selection in `generate` picks exactly the sampled token."""

        def __init__(self, seed: int):
            self.seed = seed
            self.generator = None

        def __call__(self, input_ids, scores):
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device)
                self.generator.manual_seed(self.seed)
            probs = torch.softmax(scores.float(), dim=-1)
            picked = torch.multinomial(probs, 1, generator=self.generator)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, picked, 0.0)

    class ControlCriteria(StoppingCriteria):
        """Stops every row when the request is cancelled or past its deadline; with stop
        sequences, stops a row once its recent text contains one."""

        def __init__(self, control: RunControl, prompt_len: int, tokenizer, stops: Sequence[str], base: int):
            self.control = control
            self.prompt_len = prompt_len
            self.tokenizer = tokenizer
            self.stops = tuple(stops)
            # A stop sequence of n characters spans at most 4n byte-level tokens, +2 at the edges.
            self.window = 4 * max((len(s) for s in self.stops), default=0) + 2
            self.base = base

        def __call__(self, input_ids, scores, **kwargs):
            rows = input_ids.shape[0]
            self.control.generated = self.base + rows * (input_ids.shape[1] - self.prompt_len)
            if self.control.should_stop():
                return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
            done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
            if self.stops:
                start = max(self.prompt_len, input_ids.shape[1] - self.window)
                for r in range(rows):
                    tail = _decode(self.tokenizer, input_ids[r, start:].tolist())
                    if first_stop(tail, self.stops) >= 0:
                        done[r] = True
            return done

    class StreamerAdapter(BaseStreamer):
        """`generate`'s streamer protocol onto a StreamingDecoder (skips the prompt)."""

        def __init__(self, decoder: StreamingDecoder):
            self.decoder = decoder
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.decoder.add(value.reshape(-1).tolist())

        def end(self):
            self.decoder.finish()

    return torch, SeededSampler, ControlCriteria, StreamerAdapter


_HELPERS = None
_HELPERS_LOCK = threading.Lock()


def _helpers():
    global _HELPERS
    with _HELPERS_LOCK:
        if _HELPERS is None:
            _HELPERS = _torch_helpers()
        return _HELPERS


def render_prompt(tokenizer, messages: list[dict[str, str]], enable_thinking: bool) -> list[int]:
    """Token ids of the conversation rendered with the model's chat template, ending with the
    assistant turn's opening. Raises FailedPrecondition (no template) or InvalidArgument
    (the template rejects the conversation)."""
    if not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition("the model's tokenizer has no chat template")
    from jinja2 import TemplateError

    try:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, enable_thinking=enable_thinking,
        )
    except TemplateError as exc:
        raise InvalidArgument.for_field("messages", f"rejected by the model's chat template: {exc}") from exc
    if hasattr(ids, "keys"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _generate(loaded, prompts: list[list[int]], params: SamplingParams, control: RunControl,
              decoder: StreamingDecoder | None = None):
    """One `generate` call over left-padded prompts. Returns the new token ids (rows × steps)."""
    torch, SeededSampler, ControlCriteria, StreamerAdapter = _helpers()
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    model = loaded.model
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[loaded.pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    device = next(model.parameters()).device
    gen_config = GenerationConfig(
        max_new_tokens=params.max_tokens,
        min_new_tokens=params.min_tokens or None,
        do_sample=False,  # sampling, when asked, is done by SeededSampler
        num_beams=1,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=list(loaded.eos_ids),
        pad_token_id=loaded.pad_id,
        use_cache=True,
    )
    processors = LogitsProcessorList()
    if not params.greedy:
        processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        processors.append(SeededSampler(seed))
    criteria = StoppingCriteriaList([ControlCriteria(control, width, loaded.tokenizer, params.stop, control.generated)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=gen_config,
            logits_processor=processors,
            stopping_criteria=criteria,
            streamer=StreamerAdapter(decoder) if decoder is not None else None,
            use_model_defaults=False,
        )
    return out[:, width:].tolist()


def _complete(loaded, new_ids: list[int], prompt_len: int, params: SamplingParams) -> Completion:
    eos = set(loaded.eos_ids)
    hit_eos = False
    kept: list[int] = []
    for tid in new_ids:
        if tid in eos:
            hit_eos = True
            break
        kept.append(tid)
    text, hit_stop = _final_text(loaded.tokenizer, kept, params.stop)
    thinking, content = split_thinking(text)
    return Completion(
        content=content,
        thinking=thinking,
        finish_reason="stop" if (hit_eos or hit_stop) else "length",
        prompt_tokens=prompt_len,
        completion_tokens=len(kept) + (1 if hit_eos else 0),
    )


def _context_room(loaded, prompt_len: int) -> int | None:
    """New tokens that still fit in the model's context after the prompt (None: no limit)."""
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    return None if not limit else int(limit) - prompt_len


def _fit(params: SamplingParams, room: int | None) -> SamplingParams:
    """At most `room` new tokens: an answer that reaches the end of the context ends there
    (finish_reason `length`)."""
    if room is None or params.max_tokens <= room:
        return params
    return replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))


def chat(loaded, messages: list[dict[str, str]], params: SamplingParams, control: RunControl, *,
         enable_thinking: bool = False, on_text: Callable[[str], None] | None = None) -> Completion:
    """Answer one conversation. With `on_text`, each new piece of whole-character text is
    passed to it as soon as it decodes (same single generation). Raises InvalidArgument when
    the prompt fills the model's context, Cancelled or DeadlineExceeded when stopped early."""
    prompt = render_prompt(loaded.tokenizer, messages, enable_thinking)
    room = _context_room(loaded, len(prompt))
    if room is not None and room < 1:
        raise InvalidArgument.for_field(
            "messages", f"the rendered prompt is {len(prompt)} tokens, which fills the model's context "
                        f"of {len(prompt) + room} tokens")
    params = _fit(params, room)
    decoder = None
    if on_text is not None:
        decoder = StreamingDecoder(loaded.tokenizer, on_text, loaded.eos_ids, params.stop)
    new_ids = _generate(loaded, [prompt], params, control, decoder)[0]
    control.raise_if_stopped()
    return _complete(loaded, new_ids, len(prompt), params)


def batch(loaded, prompts: Sequence[str], params: SamplingParams, control: RunControl, *,
          batch_size: int) -> list[Completion]:
    """Answer single-turn prompts in batched generations of `batch_size` (similar lengths
    together, left padding); results in prompt order. A seed seeds every chunk."""
    rendered = [render_prompt(loaded.tokenizer, [{"role": "user", "content": p}], False) for p in prompts]
    rooms = [_context_room(loaded, len(r)) for r in rendered]
    too_long = [(f"prompts[{i}]", f"the rendered prompt is {len(rendered[i])} tokens, which fills the model's "
                                  f"context of {len(rendered[i]) + room} tokens")
                for i, room in enumerate(rooms) if room is not None and room < 1]
    if too_long:
        raise InvalidArgument.for_fields(too_long)
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    results: list[Completion | None] = [None] * len(rendered)
    for start in range(0, len(order), batch_size):
        if control.should_stop():
            break
        chunk = order[start:start + batch_size]
        # Left padding: the longest prompt of the chunk sets how much context is left.
        rows = _generate(loaded, [rendered[i] for i in chunk], _fit(params, rooms[chunk[-1]]), control)
        for i, new_ids in zip(chunk, rows):
            results[i] = _complete(loaded, new_ids, len(rendered[i]), params)
    control.raise_if_stopped()
    return results  # type: ignore[return-value]

