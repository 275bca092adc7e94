"""Generation metrics through evalscope: exact match and ROUGE-1/2/L on greedy answers.

Each conversation becomes one question: the messages up to its last user turn are the prompt
(system message and earlier turns included, so a multi-turn answer is asked in context), and the
assistant reply to that turn is the reference. They are written as an evalscope `general_qa`
dataset (`{"messages": [...], "answer": "..."}`, so evalscope applies no prompt template of its
own) and evalscope runs the benchmark offline:

- by default with its local-checkpoint backend (`eval_type="llm_ckpt"`, evalscope's
  `ModelScopeAPI`): we hand it the model we already loaded (adapter applied, safetensors only,
  `trust_remote_code` as configured) instead of a path, so evalscope neither loads a second
  copy with `trust_remote_code=True` nor memoizes it for the life of the process;
- or, when `eval.openai_base_url` is set, through its OpenAI-compatible client against that
  endpoint (Win-Train's own `/v1/chat/completions`).

evalscope scores ROUGE (jieba-segmented for Chinese); we read its per-sample predictions and
scores back, take its aggregate ROUGE F1 values, and compute exact match on the same
predictions. evalscope's BLEU needs NLTK data from the internet and is not offered.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from services.common.errors import Cancelled, FailedPrecondition, Unavailable

log = logging.getLogger("wintrain.eval")

BENCHMARK = "general_qa"
SUBSET = "wintrain"
MODEL_ID = "wintrain"
# Our metric name -> evalscope's per-sample score key (F1 of each ROUGE variant).
ROUGE_KEYS = {"rouge-1": "Rouge-1-F", "rouge-2": "Rouge-2-F", "rouge-l": "Rouge-L-F"}
# Our metric name -> the dimensions of evalscope's aggregate `rouge` metric in its report.
_ROUGE_REPORT_DIMS = {
    "rouge-1": {"ngram": 1, "statistic": "f1"},
    "rouge-2": {"ngram": 2, "statistic": "f1"},
    "rouge-l": {"variant": "l", "statistic": "f1"},
}

# One evalscope run at a time per process: its llm_ckpt backend batches requests from every
# caller in one global queue with the first request's model, and it reconfigures logging.
_EVALSCOPE_LOCK = threading.Lock()
_IMPORT_LOCK = threading.Lock()
_api_class = None


@dataclass(frozen=True)
class QAItem:
    """One question: `index` is the row's position in the caller's list."""

    index: int
    prompt: list[dict]
    reference: str


@dataclass
class GeneratedAnswer:
    index: int
    prediction: str
    exact_match: float
    rouge: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerationResult:
    metrics: dict[str, float]
    answers: list[GeneratedAnswer]
    work_dir: Path


@dataclass(frozen=True)
class OpenAITarget:
    """An OpenAI-compatible endpoint evalscope calls instead of running the model itself."""

    base_url: str
    model: str
    api_key: str = "EMPTY"


def qa_item(index: int, messages: Sequence[dict]) -> QAItem | None:
    """The prompt (everything before the last assistant reply that answers a user turn) and
    that reply as the reference; None when the conversation has no such pair."""
    for i in range(len(messages) - 1, 0, -1):
        if messages[i].get("role") == "assistant" and messages[i - 1].get("role") == "user":
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:i]]
            return QAItem(index=index, prompt=prompt, reference=str(messages[i]["content"]))
    return None


def normalize_answer(text: str) -> str:
    """Normal form for exact match: Unicode NFKC (full-width to half-width), case-folded,
    punctuation (any Unicode P* category, so Chinese 。！？ too) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return 1.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


@contextlib.contextmanager
def _keep_root_logging():
    """evalscope calls `logging.basicConfig(force=True)` on import, which would replace the
    service's JSON log handler; put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _evalscope_logger_quiet() -> None:
    # evalscope logs every step at INFO, and a warning per empty answer, to its own coloured
    # console handler (and, while a progress bar is open, through tqdm to stdout), beside our
    # JSON logs. Keep its errors only; they also land in the run folder (logs/eval_log.log).
    es_log = logging.getLogger("evalscope")
    if _errors_only not in es_log.filters:
        es_log.addFilter(_errors_only)
    # jieba (evalscope's Chinese ROUGE segmentation) logs at DEBUG to its own stderr handler.
    logging.getLogger("jieba").setLevel(logging.WARNING)
    for handler in list(es_log.handlers):
        if not isinstance(handler, (logging.FileHandler, logging.NullHandler)):
            es_log.removeHandler(handler)
    if not es_log.handlers:
        es_log.addHandler(logging.NullHandler())


def _close_evalscope_file_logs() -> None:
    es_log = logging.getLogger("evalscope")
    for handler in list(es_log.handlers):
        if isinstance(handler, logging.FileHandler):
            es_log.removeHandler(handler)
            handler.close()


def checkpoint_api_class():
    """evalscope's llm_ckpt model API (`ModelScopeAPI`), made to take an already loaded model.

    Its `generate` (chat template, left-padded batched generation, decoding) is used as is."""
    global _api_class
    with _IMPORT_LOCK:
        if _api_class is not None:
            return _api_class
        with _keep_root_logging():
            import evalscope.metrics.utils.rouge  # noqa: F401  (imports jieba)
            import evalscope.run  # noqa: F401  (import here, under the logging guard)
            from evalscope.api.model import ModelAPI
            from evalscope.models.modelscope import ModelScopeAPI
        _evalscope_logger_quiet()

        class PreloadedCheckpointAPI(ModelScopeAPI):
            """evalscope's local-checkpoint backend on a model loaded by Win-Train."""

            def __init__(self, model, tokenizer, *, on_sample: Callable[[], None] | None = None,
                         should_stop: Callable[[], bool] | None = None):
                ModelAPI.__init__(self, model_name=MODEL_ID)
                self.model = model
                # evalscope sets left padding on its tokenizer; keep the caller's untouched.
                self.tokenizer = copy.deepcopy(tokenizer)
                if self.tokenizer.pad_token is None:
                    self.tokenizer.pad_token = self.tokenizer.eos_token
                self.tokenizer.padding_side = "left"
                self.device = str(next(model.parameters()).device)
                self.chat_template = None
                self.tokenizer_call_args = {}
                self.enable_thinking = None
                self._on_sample = on_sample
                self._should_stop = should_stop

            def generate(self, input, tools, tool_choice, config):  # noqa: A002 - evalscope's name
                if self._should_stop is not None and self._should_stop():
                    raise Cancelled("evaluation cancelled")
                output = super().generate(input, tools, tool_choice, config)
                if self._on_sample is not None:
                    self._on_sample()
                return output

        _api_class = PreloadedCheckpointAPI
        return _api_class


def write_general_qa(items: Sequence[QAItem], folder: Path) -> Path:
    """Write the items as evalscope's general_qa local dataset `<folder>/<SUBSET>.jsonl`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SUBSET}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps({"messages": item.prompt, "answer": item.reference}, ensure_ascii=False) + "\n")
    return path


def run_generation_metrics(
    items: Sequence[QAItem],
    work_dir: Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    model=None,
    tokenizer=None,
    openai: OpenAITarget | None = None,
    on_sample: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Run evalscope's general_qa benchmark on `items` with outputs in `work_dir` (which must
    be empty or absent) and return exact match and ROUGE F1 (mean over samples) with the
    per-sample answers in the order of `items`.

    Either `model` + `tokenizer` (llm_ckpt backend) or `openai` must be given. Raises
    Cancelled when `should_stop()` turns true, Unavailable when the OpenAI endpoint cannot be
    reached, FailedPrecondition when evalscope fails otherwise."""
    if not items:
        raise ValueError("no items to generate for")
    api_cls = checkpoint_api_class()  # also imports evalscope under the logging guard
    from evalscope.config import TaskConfig
    from evalscope.run import run_task

    done = 0
    done_lock = threading.Lock()

    def count_one() -> None:
        nonlocal done
        with done_lock:
            done += 1
            current = done
        if on_sample is not None:
            on_sample(current)

    dataset_dir = work_dir / "dataset"
    write_general_qa(items, dataset_dir)
    # The llm_ckpt backend fills a batch or waits 2 s for more requests; a batch no larger than
    # the item count never waits on a tail that cannot come.
    workers = max(1, min(batch_size, len(items)))
    common = dict(
        datasets=[BENCHMARK],
        dataset_args={BENCHMARK: {"local_path": str(dataset_dir), "subset_list": [SUBSET], "metric_list": ["Rouge"]}},
        eval_batch_size=workers,
        work_dir=str(work_dir),
        no_timestamp=True,
        model_id=MODEL_ID,
    )
    if openai is not None:
        task = dict(common, model=openai.model, eval_type="openai_api", api_url=openai.base_url,
                    api_key=openai.api_key,
                    # evalscope's default is 5 tries 10 s apart; the OpenAI client retries too.
                    generation_config={"max_tokens": max_new_tokens, "temperature": 0.0,
                                       "retries": 1, "retry_interval": 1})
        api = None
    else:
        if model is None or tokenizer is None:
            raise ValueError("model and tokenizer are required without an OpenAI endpoint")
        api = api_cls(model, tokenizer, on_sample=lambda: count_one(), should_stop=should_stop)
        task = dict(common, model=api, eval_type="llm_ckpt",
                    generation_config={"max_tokens": max_new_tokens, "do_sample": False})

    with _EVALSCOPE_LOCK, _keep_root_logging():
        try:
            reports = run_task(TaskConfig(**task))
        except Cancelled:
            raise
        except Exception as exc:  # evalscope's own failures become a clear status
            if should_stop is not None and should_stop():
                raise Cancelled("evaluation cancelled") from exc
            if openai is not None and _is_connection_error(exc):
                raise Unavailable(
                    f"eval.openai_base_url {openai.base_url} cannot be reached: {exc}",
                    [("eval.openai_base_url", "unreachable")],
                ) from exc
            raise FailedPrecondition(f"generation metrics failed in evalscope: {type(exc).__name__}: {exc}") from exc
        finally:
            _close_evalscope_file_logs()
            _evalscope_logger_quiet()

    report = reports.get(BENCHMARK) if isinstance(reports, dict) else None
    answers = _read_answers(work_dir, items)
    if openai is not None and on_sample is not None:
        on_sample(len(items))
    errored = len(items) - len(answers)
    if errored:
        raise FailedPrecondition(f"evalscope produced answers for {len(answers)} of {len(items)} questions")
    metrics = {"exact_match": sum(a.exact_match for a in answers) / len(answers)}
    metrics.update(_report_rouge(report, answers))
    return GenerationResult(metrics=metrics, answers=answers, work_dir=work_dir)


def _is_connection_error(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if name in ("APIConnectionError", "APITimeoutError", "ConnectError", "ConnectionError",
                    "ConnectionRefusedError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _read_answers(work_dir: Path, items: Sequence[QAItem]) -> list[GeneratedAnswer]:
    """Per-sample predictions and ROUGE scores from evalscope's review file, mapped back to
    the items (evalscope numbers samples in dataset order)."""
    reviews = sorted((work_dir / "reviews").rglob(f"{BENCHMARK}_{SUBSET}.jsonl"))
    answers: dict[int, GeneratedAnswer] = {}
    for path in reviews:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                review = json.loads(line)
                pos = int(review["index"])
                score = review["sample_score"]["score"]
                prediction = score.get("prediction") or ""
                values = score.get("value") or {}
                item = items[pos]
                answers[pos] = GeneratedAnswer(
                    index=item.index,
                    prediction=prediction,
                    exact_match=exact_match(prediction, item.reference),
                    rouge={ours: float(values.get(theirs, 0.0)) for ours, theirs in ROUGE_KEYS.items()},
                )
    return [answers[pos] for pos in sorted(answers)]


def _report_rouge(report, answers: Sequence[GeneratedAnswer]) -> dict[str, float]:
    """evalscope's aggregate ROUGE F1 values from its report (mean over samples); the mean
    of the per-sample values when the report lacks one."""
    out: dict[str, float] = {}
    metrics = list(getattr(report, "metrics", None) or [])
    for ours, dims in _ROUGE_REPORT_DIMS.items():
        for metric in metrics:
            identity = getattr(metric, "identity", None)
            if identity is not None and identity.name == "rouge" and dict(identity.dimensions) == dims:
                out[ours] = float(metric.score)
                break
        else:
            out[ours] = sum(a.rouge.get(ours, 0.0) for a in answers) / len(answers)
    return out
