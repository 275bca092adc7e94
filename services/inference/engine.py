"""Generation: chat templates, sampling, stop sequences, seeds, streaming, batches.

Everything here blocks and runs in a worker thread. Each answer (each prompt of a batch, each
of `n` choices) is one row of its model's running batch (`services.inference.scheduler`:
continuous batching, one step-level thread per model); the calling thread waits for its rows.
A `RunControl` shared with the request handler stops a row within one decoding step when the
client cancels or the deadline passes; the other rows go on.

Sampling never touches torch's global RNG: each row samples with its own `torch.Generator`,
so a seed gives the same output whatever else is generating in the same batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from services.common.errors import Cancelled, DeadlineExceeded, FailedPrecondition, InvalidArgument

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20  # as OpenAI
MAX_LOGIT_BIAS = 300  # tokens one request may bias (OpenAI's limit)
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
    # OpenAI-style penalties on the tokens generated so far (counted / seen at all).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: bool = False  # record each token's log-probability
    top_logprobs: int = 0  # and the most likely alternatives (0..MAX_TOP_LOGPROBS)
    # Per-row logits hook: f(generated_ids, logits (V,)) -> logits, applied before sampling.
    logits_hook: Callable | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that looks at a row's own history (one batched argmax)."""
        return (self.greedy and self.repetition_penalty == 1.0 and not self.frequency_penalty
                and not self.presence_penalty and not self.logit_bias and not self.logprobs
                and self.logits_hook is None)


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
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    vocab_size: int | None = None,
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
    for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if not (-2.0 <= value <= 2.0):  # also catches NaN
            bad.append((name, "must be in [-2, 2] (0: none)"))
    bias = dict(logit_bias or {})
    if len(bias) > MAX_LOGIT_BIAS:
        bad.append(("logit_bias", f"at most {MAX_LOGIT_BIAS} tokens"))
    for tid, value in sorted(bias.items()):
        if tid < 0 or (vocab_size is not None and tid >= vocab_size):
            bad.append((f"logit_bias[{tid}]", f"not a token id of this model (0..{(vocab_size or 0) - 1})"))
        elif not (-100.0 <= value <= 100.0):
            bad.append((f"logit_bias[{tid}]", "must be in [-100, 100]"))
    if top_logprobs is not None and not (0 <= top_logprobs <= MAX_TOP_LOGPROBS):
        bad.append(("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}]"))
    elif top_logprobs and not logprobs:
        bad.append(("top_logprobs", "needs logprobs: true"))
    if bad:
        raise InvalidArgument.for_fields(bad)
    return SamplingParams(
        max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
        repetition_penalty=float(repetition_penalty), min_tokens=int(min_tokens), stop=tuple(stop), seed=seed,
        frequency_penalty=float(frequency_penalty), presence_penalty=float(presence_penalty),
        logit_bias=tuple((int(t), float(b)) for t, b in sorted(bias.items()) if b),
        logprobs=bool(logprobs), top_logprobs=int(top_logprobs or 0),
    )


def check_messages(messages: Sequence[tuple[str, str]], tools: bool = False) -> list[dict[str, str]]:
    """Messages as the chat template wants them. Roles: `system` (first only), `user`,
    `assistant`, and with `tools` also `tool` (a tool's result); the last one is the user's
    (or, with tools, a tool result). Raises InvalidArgument naming the field."""
    if not messages:
        raise InvalidArgument.for_field("messages", "must not be empty")
    roles = ROLES + ("tool",) if tools else ROLES
    last_roles = ("user", "tool") if tools else ("user",)
    bad = []
    for i, (role, _content) in enumerate(messages):
        if role not in roles:
            bad.append((f"messages[{i}].role", f"unknown role {role!r}; expected one of {', '.join(roles)}"
                        + ("" if tools or role != "tool" else " (`tool` messages need tools)")))
        elif role == "system" and i != 0:
            bad.append((f"messages[{i}].role", "a system message may only come first"))
    if not bad and messages[-1][0] not in last_roles:
        last = len(messages) - 1
        bad.append((f"messages[{last}].role", "the conversation must end with a user message"
                    + (" or a tool result" if tools else "")))
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
    logprobs: list = field(default_factory=list)  # scheduler.TokenLogprob per answer token, when asked
    index: int = 0  # which of the request's `n` choices


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


# -- generation ----------------------------------------------------------------------------


def render_prompt(tokenizer, messages: list[dict[str, str]], enable_thinking: bool,
                  tools: list[dict] | None = None) -> list[int]:
    """Token ids of the conversation rendered with the model's chat template, ending with the
    assistant turn's opening; `tools` (OpenAI function definitions) are given to the template.
    Raises FailedPrecondition (no template) or InvalidArgument (the template rejects the
    conversation, or ignores the tools: naming `tools`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition("the model's tokenizer has no chat template")
    from jinja2 import TemplateError

    try:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, enable_thinking=enable_thinking,
            **({"tools": tools} if tools else {}),
        )
        if tools and ids == tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, enable_thinking=enable_thinking):
            raise InvalidArgument.for_field("tools", "this model's chat template does not render tools")
    except TemplateError as exc:
        raise InvalidArgument.for_field("messages", f"rejected by the model's chat template: {exc}") from exc
    if hasattr(ids, "keys"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


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


@dataclass
class StreamEvent:
    """A piece of one choice's streamed text, with the logprobs of the tokens it completes."""

    index: int
    text: str
    logprobs: list


def _check_room(loaded, prompt: list[int], field_name: str) -> int | None:
    room = _context_room(loaded, len(prompt))
    if room is not None and room < 1:
        raise InvalidArgument.for_field(
            field_name, f"the rendered prompt is {len(prompt)} tokens, which fills the model's context "
                        f"of {len(prompt) + room} tokens")
    return room


def _check_vocab(loaded, params: SamplingParams) -> None:
    vocab = _vocab_size(loaded)
    bad = [(f"logit_bias[{t}]", f"not a token id of this model (0..{vocab - 1})")
           for t, _b in params.logit_bias if t >= vocab]
    if bad:
        raise InvalidArgument.for_fields(bad)


def _vocab_size(loaded) -> int:
    return int(loaded.model.get_output_embeddings().weight.shape[0])


def _run(loaded, seqs: list, control: RunControl, max_rows: int) -> None:
    """Put rows into the model's running batch and wait until every one has ended."""
    from services.inference import scheduler

    scheduler.submit(loaded, seqs, max_rows)
    for seq in seqs:
        seq.done.wait()
    for seq in seqs:
        if seq.error is not None:
            raise seq.error
    control.raise_if_stopped()


def _sequence(loaded, prompt: list[int], params: SamplingParams, control: RunControl, sink=None):
    from services.inference.scheduler import Sequence as Row

    decoder = None
    if sink is not None or params.stop:
        decoder = StreamingDecoder(loaded.tokenizer, sink or (lambda _piece: None), loaded.eos_ids, params.stop)
    return Row(prompt=prompt, params=params, control=control, decoder=decoder,
               adapter=getattr(loaded, "adapter_name", None))


def chat(loaded, messages: list[dict[str, str]], params: SamplingParams, control: RunControl, *,
         enable_thinking: bool = False, on_text: Callable[[str], None] | None = None,
         tools: list[dict] | None = None, n: int = 1, on_event: Callable[[StreamEvent], None] | None = None,
         max_rows: int = 16) -> Completion | list[Completion]:
    """Answer one conversation: `n` choices (rows of the model's running batch; with a seed,
    choice i samples with seed + i). With `on_text` (n == 1), each new piece of whole-character
    text is passed to it as soon as it decodes; with `on_event`, a StreamEvent per piece of
    any choice. Returns the Completion (a list of n when n > 1). Raises InvalidArgument when
    the prompt fills the model's context, Cancelled or DeadlineExceeded when stopped early."""
    prompt = render_prompt(loaded.tokenizer, messages, enable_thinking, tools)
    params = _fit(params, _check_room(loaded, prompt, "messages"))
    _check_vocab(loaded, params)
    seqs = []
    for i in range(n):
        p_i = params if params.seed is None or i == 0 else replace(params, seed=params.seed + i)
        sink = None
        if on_event is not None:
            sink = _event_sink(on_event, i, seqs)
        elif on_text is not None and i == 0:
            sink = on_text
        seqs.append(_sequence(loaded, prompt, p_i, control, sink))
    _run(loaded, seqs, control, max_rows)
    done = []
    for i, seq in enumerate(seqs):
        c = _complete(loaded, seq.ids, len(prompt), seq.params)
        c.logprobs, c.index = seq.logprobs[:c.completion_tokens], i
        done.append(c)
    return done[0] if n == 1 else done


def _event_sink(on_event: Callable[[StreamEvent], None], index: int, seqs: list):
    sent = [0]

    def sink(piece: str) -> None:
        row = seqs[index]
        logprobs = row.logprobs[sent[0]:]
        sent[0] = len(row.logprobs)
        on_event(StreamEvent(index, piece, logprobs))

    return sink


def batch(loaded, prompts: Sequence[str], params: SamplingParams, control: RunControl, *,
          batch_size: int) -> list[Completion]:
    """Answer single-turn prompts, each a row of the model's running batch (at most
    `batch_size` rows step together); results in prompt order. A seed seeds every prompt."""
    rendered = [render_prompt(loaded.tokenizer, [{"role": "user", "content": p}], False) for p in prompts]
    rooms = [_context_room(loaded, len(r)) for r in rendered]
    too_long = [(f"prompts[{i}]", f"the rendered prompt is {len(rendered[i])} tokens, which fills the model's "
                                  f"context of {len(rendered[i]) + room} tokens")
                for i, room in enumerate(rooms) if room is not None and room < 1]
    if too_long:
        raise InvalidArgument.for_fields(too_long)
    _check_vocab(loaded, params)
    seqs = [_sequence(loaded, r, _fit(params, room), control) for r, room in zip(rendered, rooms)]
    _run(loaded, seqs, control, batch_size)
    return [_complete(loaded, seq.ids, len(r), seq.params) for seq, r in zip(seqs, rendered)]
