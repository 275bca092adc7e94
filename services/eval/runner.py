"""One evaluation from start to end: read rows, load the model, score tokens, generate, report.

Plain Python (no grpc). The servicer resolves and checks every path, then calls
`run_evaluation` in a worker thread with a progress callback and a stop flag.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from services.common.config import Config
from services.common.errors import Cancelled, InvalidArgument, ResourceExhausted
from services.common.fsutil import atomic_directory, atomic_writer
from services.common.modeling import ModelSource, load_model

log = logging.getLogger("wintrain.eval")

# Requestable metric names. `rouge` yields rouge-1, rouge-2 and rouge-l (F1). The preference
# metrics need a preference dataset (prompt / chosen / rejected pairs).
TOKEN_METRICS = ("loss", "perplexity", "accuracy", "token_accuracy")
GENERATION_METRICS = ("exact_match", "rouge")
PREFERENCE_METRICS = ("preference_accuracy", "reward_margin")
SUPPORTED_METRICS = TOKEN_METRICS + GENERATION_METRICS + PREFERENCE_METRICS

# Progress callback: (phase, samples done, samples total).
Progress = Callable[[str, int, int], None]


def parse_metrics(names: Sequence[str]) -> list[str]:
    """Normalised, de-duplicated metric names in request order. Raises InvalidArgument
    (field `metrics`) listing the supported names for any unknown or empty one."""
    wanted: list[str] = []
    unknown: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in SUPPORTED_METRICS:
            unknown.append(str(raw))
        elif name not in wanted:
            wanted.append(name)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown)
        raise InvalidArgument.for_field(
            "metrics", f"unknown metric {shown}; supported: {', '.join(SUPPORTED_METRICS)}")
    if not wanted:
        raise InvalidArgument.for_field("metrics", f"must name at least one of: {', '.join(SUPPORTED_METRICS)}")
    return wanted


@dataclass
class EvalJob:
    """A checked request: every path already resolved and allowed."""

    model: ModelSource
    dataset_path: Path
    metrics: list[str]
    batch_size: int
    max_samples: int = 0
    max_new_tokens: int = 128
    per_sample_path: Path | None = None
    # Name evalscope sends as `model` to an OpenAI-compatible endpoint (the client's path).
    openai_model_name: str = ""
    # reward_margin: the reference of a full model (an adapter's is its base, adapter
    # disabled) and DPO's beta.
    reference: ModelSource | None = None
    beta: float = 0.1


@dataclass
class EvalResult:
    metrics: dict[str, float]
    total_samples: int
    eval_time: float
    tokens_scored: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)  # rows left out, by reason
    truncated_samples: int = 0
    per_sample_path: Path | None = None
    report_path: Path | None = None

    @property
    def skipped_samples(self) -> int:
        return sum(self.skip_reasons.values())


# Formats the data service converts to conversations (services.common.dataset.formats).
CONVERTIBLE_FORMATS = ("openai", "sharegpt", "alpaca")


@dataclass
class _Row:
    number: int  # 1-based line (JSONL) or element (JSON array) in the file
    messages: list[dict]  # a preference row: prompt + chosen
    rejected: list[dict] | None = None  # a preference row: prompt + rejected


def read_rows(path: Path, *, max_row_bytes: int, limit: int, field_name: str = "dataset_path",
              should_stop: Callable[[], bool] | None = None) -> tuple[list[_Row], Counter]:
    """Valid rows of the dataset (the data service's row rules: conversations, or preference
    pairs), at most `limit` (0: all), and the count of invalid rows by their first problem's
    code. The first valid row sets the dataset's kind; rows of the other kind are skipped as
    `mixed_kinds`."""
    from services.common.dataset.formats import PREFERENCE_FORMATS, detect_row_format
    from services.common.dataset.preference import check_pair
    from services.common.dataset.reader import RowError, RowReader, check_input_file, parse_row
    from services.common.dataset.rules import explain_row

    check_input_file(path, field=field_name)
    rows: list[_Row] = []
    skipped: Counter = Counter()
    kind = None
    reader = RowReader(path, max_row_bytes=max_row_bytes)
    for count, (number, raw) in enumerate(reader):
        if should_stop is not None and count % 1024 == 0 and should_stop():
            raise Cancelled("evaluation cancelled")
        if isinstance(raw, RowError):
            skipped[raw.code] += 1
            continue
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped["invalid_utf8"] += 1
                continue
        obj = parse_row(raw)
        if isinstance(obj, RowError):
            skipped[obj.code] += 1
            continue
        fmt = detect_row_format(obj)
        if fmt in PREFERENCE_FORMATS:
            pair, problems = check_pair(obj, fmt)
            if problems:
                skipped[problems[0][1]] += 1
                continue
            row = _Row(number=number, messages=pair["prompt"] + pair["chosen"],
                       rejected=pair["prompt"] + pair["rejected"])
        else:
            problems = explain_row(obj)
            if problems:
                # A row in another format the data service converts is named as such (e.g.
                # `openai_format`), so the answer can say how to fix the file.
                skipped[f"{fmt}_format" if fmt in CONVERTIBLE_FORMATS else problems[0][1]] += 1
                continue
            row = _Row(number=number, messages=obj["conversations"])
        row_kind = "preference" if row.rejected is not None else "sft"
        if kind is None:
            kind = row_kind
        elif row_kind != kind:
            skipped["mixed_kinds"] += 1
            continue
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    for issue in reader.file_issues:
        skipped[issue.code] += 1
    return rows, skipped


def _openai_target(config: Config, job: EvalJob):
    from services.eval.generation_metrics import OpenAITarget

    base_url = str(config.get("eval.openai_base_url") or "").strip()
    if not base_url:
        return None
    return OpenAITarget(base_url=base_url, model=job.openai_model_name or str(job.model.path),
                        api_key=str(config.get("eval.openai_api_key") or "EMPTY"))


def reports_root(config: Config) -> Path:
    """Folder that holds evalscope's run folders (config `eval.reports_dir`, relative to the
    workspace)."""
    raw = Path(str(config.get("eval.reports_dir") or "eval"))
    return (raw if raw.is_absolute() else config.workspace / raw).resolve()


def run_evaluation(
    job: EvalJob,
    config: Config,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Evaluate `job.model` on `job.dataset_path`.

    Raises InvalidArgument (no usable rows), FailedPrecondition (the model cannot be loaded or
    has no usable chat template; evalscope failed), Unavailable (OpenAI endpoint down),
    Cancelled (`should_stop()` turned true)."""
    started = time.perf_counter()
    report = progress or (lambda phase, done, total: None)
    stop = should_stop or (lambda: False)
    wants_tokens = any(m in TOKEN_METRICS for m in job.metrics)
    wants_generation = any(m in GENERATION_METRICS for m in job.metrics)
    openai = _openai_target(config, job) if wants_generation else None

    report("loading", 0, 0)
    rows, skipped = read_rows(
        job.dataset_path,
        max_row_bytes=int(config.get("dataset.max_row_bytes", 1 << 20)),
        limit=job.max_samples,
        should_stop=stop,
    )
    if not rows:
        _no_usable_rows(skipped)
    wanted_pairs = [m for m in job.metrics if m in PREFERENCE_METRICS]
    if wanted_pairs and rows[0].rejected is None:
        raise InvalidArgument.for_field(
            "metrics", f"{', '.join(wanted_pairs)} needs a preference dataset (prompt / chosen / "
            f"rejected pairs); {job.dataset_path.name} holds SFT conversations")

    model = tokenizer = None
    if wants_tokens or wanted_pairs or openai is None:
        model, tokenizer = load_model(job.model, config)
    try:
        return _evaluate_loaded(job, config, rows, skipped, model, tokenizer, openai,
                                wants_tokens, wants_generation, report, stop, started)
    finally:
        del model, tokenizer
        gc.collect()
        _empty_device_cache()


def _evaluate_loaded(job, config, rows, skipped, model, tokenizer, openai, wants_tokens,
                     wants_generation, report, stop, started) -> EvalResult:
    from services.eval import metrics as token_metrics

    metrics: dict[str, float] = {}
    per_sample: dict[int, dict] = {}
    tokens_scored = truncated = 0

    usable = list(range(len(rows)))
    preference = rows[0].rejected is not None
    wants_pairs = any(m in PREFERENCE_METRICS for m in job.metrics)
    if wants_tokens or wants_pairs:
        token_metrics.check_chat_template(tokenizer)
        max_length = int(config.get("eval.max_length", 512))
        # A preference row scores its completion only (the last assistant message): the
        # chosen side for the token metrics, both sides for the preference metrics.
        chosen = _encode(token_metrics, tokenizer, rows, [r.messages for r in rows], max_length,
                         preference)
        rejected = _encode(token_metrics, tokenizer, rows, [r.rejected for r in rows], max_length,
                           True) if wants_pairs else None
        encoded, encoded_rejected = [], []
        for i in range(len(rows)):
            reason = chosen[i] if isinstance(chosen[i], str) else \
                rejected[i] if rejected is not None and isinstance(rejected[i], str) else None
            if reason is not None:
                skipped[reason] += 1
                continue
            encoded.append(chosen[i])
            if rejected is not None:
                encoded_rejected.append(rejected[i])
        if not encoded:
            _no_usable_rows(skipped)
        usable = [s.index for s in encoded]
        samples = encoded + encoded_rejected  # one batched pass over both sides
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            pad_id = 0
        report("scoring", 0, len(samples))
        with _out_of_memory_is_resource_exhausted(job.batch_size):
            all_scores = token_metrics.score_samples(
                model, samples, batch_size=job.batch_size, pad_token_id=pad_id,
                on_batch=lambda done: report("scoring", done, len(samples)), should_stop=stop,
            )
        scores, scores_rejected = all_scores[:len(encoded)], all_scores[len(encoded):]
        truncated = sum(1 for s in encoded if s.truncated)
        truncated_rows = {s.index for s in encoded if s.truncated}
        if wants_tokens:
            agg = token_metrics.aggregate(scores)
            tokens_scored = agg.tokens
            for name in job.metrics:
                if name == "loss":
                    metrics["loss"] = agg.loss
                elif name == "perplexity":
                    metrics["perplexity"] = agg.perplexity
                elif name in ("accuracy", "token_accuracy"):
                    metrics[name] = agg.token_accuracy
            for s in scores:
                per_sample[s.index] = {
                    "loss": s.loss, "tokens": s.tokens, "correct": s.correct,
                    "truncated": s.index in truncated_rows,
                }
        if wants_pairs:
            ref = None
            if "reward_margin" in job.metrics:
                report("reference", 0, len(samples))
                with _out_of_memory_is_resource_exhausted(job.batch_size):
                    ref_scores = _reference_scores(
                        job, config, model, tokenizer, samples, pad_id,
                        lambda done: report("reference", done, len(samples)), stop)
                ref = (ref_scores[:len(encoded)], ref_scores[len(encoded):])
            pm, per_pair = token_metrics.preference_metrics(
                scores, scores_rejected, *(ref or (None, None)), beta=job.beta)
            if not wants_tokens:
                tokens_scored = sum(s.tokens for s in all_scores)
            for name in job.metrics:
                if name == "preference_accuracy":
                    metrics[name] = pm.preference_accuracy
                elif name == "reward_margin":
                    metrics[name] = pm.reward_margin
            cut = truncated_rows | {r.index for r in encoded_rejected if r.truncated}
            for s, entry in zip(scores, per_pair):
                per_sample.setdefault(s.index, {}).update(entry, truncated=s.index in cut)

    report_dir: Path | None = None
    if wants_generation:
        from services.eval.generation_metrics import qa_item, run_generation_metrics

        items = []
        for i in usable:
            item = qa_item(i, rows[i].messages)
            if item is None:  # valid rows always end with a user -> assistant pair
                skipped["no_question_answer_pair"] += 1
                per_sample.pop(i, None)
                continue
            items.append(item)
        if not items:
            _no_usable_rows(skipped)
        usable = [item.index for item in items]
        report("generating", 0, len(items))
        root = reports_root(config)
        run_name = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        # evalscope writes into a temporary folder that is renamed into place only when the
        # run succeeds, so no half-written report folder is ever left behind.
        with _out_of_memory_is_resource_exhausted(job.batch_size), atomic_directory(root / run_name) as tmp:
            result = run_generation_metrics(
                items, tmp,
                batch_size=job.batch_size,
                max_new_tokens=job.max_new_tokens,
                model=model, tokenizer=tokenizer, openai=openai,
                on_sample=lambda done: report("generating", done, len(items)),
                should_stop=stop,
            )
        report_dir = root / run_name
        if "exact_match" in job.metrics:
            metrics["exact_match"] = result.metrics["exact_match"]
        if "rouge" in job.metrics:
            for key in ("rouge-1", "rouge-2", "rouge-l"):
                metrics[key] = result.metrics[key]
        references = {item.index: item.reference for item in items}
        for answer in result.answers:
            entry = per_sample.setdefault(answer.index, {})
            entry["reference"] = references[answer.index]
            entry["generated"] = answer.prediction
            entry["exact_match"] = answer.exact_match
            entry.update(answer.rouge)

    written = None
    if job.per_sample_path is not None:
        written = _write_per_sample(job.per_sample_path, rows, usable, per_sample)

    return EvalResult(
        metrics={k: _finite(v) for k, v in metrics.items()},
        total_samples=len(usable),
        eval_time=time.perf_counter() - started,
        tokens_scored=tokens_scored,
        skip_reasons=dict(skipped),
        truncated_samples=truncated,
        per_sample_path=written,
        report_path=report_dir,
    )


def _encode(token_metrics, tokenizer, rows: list[_Row], conversations: list[list[dict]],
            max_length: int, last_only: bool) -> list:
    """Each conversation's EncodedSample (index = its row), or the reason it cannot be
    scored (a skip reason)."""
    out: list = []
    for row, sample in zip(rows, token_metrics.encode_conversations(
            tokenizer, conversations, max_length, last_only=last_only)):
        if isinstance(sample, Exception):  # a template that cannot render this row
            log.warning("row %s cannot be rendered: %s", row.number, sample)
            out.append("render_failed")
        elif sample.scored_tokens == 0:
            out.append("no_assistant_tokens" if not sample.truncated else "assistant_truncated_away")
        else:
            out.append(sample)
    return out


def _reference_scores(job: EvalJob, config: Config, model, tokenizer, samples, pad_id: int,
                      on_batch, stop):
    """The reference model's scores of `samples`: a LoRA adapter's base with the adapter
    disabled (PEFT's `disable_adapter()`, no second copy), else `job.reference` loaded."""
    from services.eval import metrics as token_metrics

    if job.model.kind == "adapter" and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return token_metrics.score_samples(model, samples, batch_size=job.batch_size,
                                               pad_token_id=pad_id, on_batch=on_batch,
                                               should_stop=stop)
    if job.reference is None:
        raise InvalidArgument.for_field("reference_model_path", "reward_margin needs a reference model")
    device = next(model.parameters()).device
    ref_model, ref_tokenizer = load_model(job.reference, config, device=str(device),
                                          dtype=next(model.parameters()).dtype)
    try:
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise InvalidArgument.for_field(
                "reference_model_path", f"{job.reference.path} uses another tokenizer than the "
                "model evaluated; the reference must share it")
        return token_metrics.score_samples(ref_model, samples, batch_size=job.batch_size,
                                           pad_token_id=pad_id, on_batch=on_batch, should_stop=stop)
    finally:
        del ref_model
        gc.collect()
        _empty_device_cache()


def _finite(value: float) -> float:
    # JSON (the gateway) has no NaN/Infinity; an overflowing perplexity is reported as the
    # largest double rather than breaking the response.
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return 1.7976931348623157e308 if value > 0 else -1.7976931348623157e308
    return value


def _write_per_sample(path: Path, rows: list[_Row], usable: list[int], per_sample: dict[int, dict]) -> Path:
    with atomic_writer(path) as handle:
        for i in usable:
            entry = {"line": rows[i].number, **per_sample.get(i, {})}
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return path


@contextlib.contextmanager
def _out_of_memory_is_resource_exhausted(batch_size: int):
    """Running out of (device or host) memory is the caller's batch being too big, not a bug."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
        text = str(exc).lower()
        if "out of memory" in text or "can't allocate memory" in text:
            gc.collect()
            _empty_device_cache()
            raise ResourceExhausted(
                f"out of memory at batch_size {batch_size}: lower batch_size (or eval.max_length)",
                [("batch_size", "too large for the available memory")]) from exc
        raise


def _no_usable_rows(skipped: Counter) -> None:
    reasons = ", ".join(f"{code}: {n}" for code, n in skipped.most_common()) or "the file has no rows"
    formats = sorted(code[:-len("_format")] for code in skipped if code.endswith("_format"))
    hint = (f"; rows in the {' / '.join(formats)} format can be converted to conversations with "
            "ProcessDataset (POST /api/data/process) first" if formats else "")
    raise InvalidArgument.for_field("dataset_path", f"no usable rows to evaluate ({reasons}){hint}")


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass
