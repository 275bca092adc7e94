"""EvalService: a thin servicer over `services.eval.runner`.

Requests are checked here (metric names, numbers, every path through the path policy), then
the evaluation runs as admitted blocking work (`services.common.blocking`): `EvaluateStream`
yields each progress event, `Evaluate` waits for the result. When the client goes away, the
worker's stop flag is set and it ends at the next batch; its slot is freed when it has ended.
"""

from __future__ import annotations

import logging
import math

from services.common.config import Config, ConfigError
from services.common.admission import limiter_from_config
from services.common.blocking import run_admitted, stream_admitted
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.modeling import ModelSource, resolve_model_source
from services.common.paths import display_path, resolve_allowed_path
from services.common.protomap import message_from
from services.common.server import ServiceRuntime, service_full_name
from services.eval.runner import EvalJob, EvalResult, parse_metrics, run_evaluation
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc

log = logging.getLogger("wintrain.eval")


def _positive_int(config: Config, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config: {key} must be a positive integer, got {value!r}")
    return value


class EvalServicer(eval_pb2_grpc.EvalServiceServicer):
    def __init__(self, config: Config):
        self.config = config
        self.max_batch_size = _positive_int(config, "eval.max_batch_size", 256)
        self.limiter = limiter_from_config(config, "eval", what="evaluations", max_concurrent=1, max_queue=8)
        _positive_int(config, "eval.max_length", 512)
        # Applied where a request enters (services.common.server): defaults held to these limits.
        self.default_limits = {eval_pb2.EvaluateRequest.DESCRIPTOR.full_name: {
            "max_new_tokens": int(config.get("inference.max_new_tokens_cap", 2048)),
            "batch_size": self.max_batch_size}}

    # -- request checking ---------------------------------------------------------------
    def _job(self, request: eval_pb2.EvaluateRequest) -> EvalJob:
        cfg = self.config
        cap = self.default_limits[eval_pb2.EvaluateRequest.DESCRIPTOR.full_name]["max_new_tokens"]
        metrics = parse_metrics(list(request.metrics))
        problems: list[tuple[str, str]] = []
        batch_size = request.batch_size
        if not 1 <= batch_size <= self.max_batch_size:
            problems.append(("batch_size", f"must be between 1 and {self.max_batch_size}, got {batch_size}"))
        if request.max_samples < 0:
            problems.append(("max_samples", f"must be >= 0 (0: all rows), got {request.max_samples}"))
        if not 1 <= request.max_new_tokens <= cap:
            problems.append(("max_new_tokens", f"must be between 1 and {cap}, got {request.max_new_tokens}"))
        if problems:
            raise InvalidArgument.for_fields(problems)

        beta = request.beta
        if not (math.isfinite(beta) and beta > 0):
            raise InvalidArgument.for_field("beta", f"must be a positive number, got {beta!r}")
        model = self._model_source(request)
        reference = self._reference(request, model, metrics)
        dataset = resolve_allowed_path(request.dataset_path, cfg, field="dataset_path", must_exist=True, expect="file")
        per_sample = None
        if request.HasField("per_sample_path") and request.per_sample_path.strip():
            per_sample = resolve_allowed_path(request.per_sample_path, cfg, field="per_sample_path", expect="file")
        return EvalJob(
            model=model,
            dataset_path=dataset,
            metrics=metrics,
            batch_size=batch_size,
            max_samples=request.max_samples,
            max_new_tokens=request.max_new_tokens,
            per_sample_path=per_sample,
            openai_model_name=(request.lora_adapter_path if request.HasField("lora_adapter_path")
                               and request.lora_adapter_path.strip() else request.model_path)
            or str(cfg.base_model_path),
            reference=reference,
            beta=beta,
        )

    def _reference(self, request: eval_pb2.EvaluateRequest, model: ModelSource,
                   metrics: list[str]) -> ModelSource | None:
        """reward_margin's reference: None for an adapter (its base, adapter disabled), else
        reference_model_path or the configured base model."""
        cfg = self.config
        given = request.HasField("reference_model_path") and request.reference_model_path.strip()
        if "reward_margin" not in metrics:
            if given:
                raise InvalidArgument.for_field(
                    "reference_model_path", "is used only by the reward_margin metric, which "
                    "metrics does not name")
            return None
        if model.kind == "adapter":
            if given:
                raise InvalidArgument.for_field(
                    "reference_model_path", "a LoRA adapter's reference is its own base model "
                    "with the adapter disabled; leave reference_model_path empty")
            return None
        if not given:
            return resolve_model_source(cfg.base_model_path, cfg, field="reference_model_path",
                                        trusted=True)
        path = resolve_allowed_path(request.reference_model_path, cfg, field="reference_model_path",
                                    must_exist=True, expect="dir")
        return resolve_model_source(path, cfg, field="reference_model_path")

    def _model_source(self, request: eval_pb2.EvaluateRequest) -> ModelSource:
        cfg = self.config
        if request.model_path.strip():
            path = resolve_allowed_path(request.model_path, cfg, field="model_path", must_exist=True, expect="dir")
        else:  # like chat: no model named means the configured base model
            path = cfg.base_model_path
        source = resolve_model_source(path, cfg, field="model_path", trusted=not request.model_path.strip())
        if not (request.HasField("lora_adapter_path") and request.lora_adapter_path.strip()):
            return source
        adapter = resolve_allowed_path(request.lora_adapter_path, cfg, field="lora_adapter_path",
                                       must_exist=True, expect="dir")
        if source.kind == "adapter":
            raise InvalidArgument.for_field(
                "lora_adapter_path", "model_path is itself a LoRA adapter; give its base model as model_path")
        if not (adapter / "adapter_config.json").is_file():
            raise FailedPrecondition(
                f"lora_adapter_path: {request.lora_adapter_path!r} is not a LoRA adapter folder "
                "(no adapter_config.json)", [("lora_adapter_path", "not a LoRA adapter folder")])
        if not any(adapter.glob("*.safetensors")):
            raise FailedPrecondition(
                f"lora_adapter_path: {request.lora_adapter_path!r} has no safetensors weights",
                [("lora_adapter_path", "no safetensors weights")])
        return ModelSource(path=adapter, kind="adapter", base_path=source.base_path, adapter_path=adapter)

    # -- RPCs ---------------------------------------------------------------------------
    async def Evaluate(self, request, context):
        job = self._job(request)
        return self._response(await run_admitted(self.limiter, run_evaluation, job, self.config, context=context))

    async def EvaluateStream(self, request, context):
        job = self._job(request)
        async with stream_admitted(self.limiter, run_evaluation, job, self.config, context=context) as call:
            async for phase, done, total in call:
                yield eval_pb2.EvaluateProgress(phase=phase, samples_done=done, samples_total=total)
            result: EvalResult = call.result()
        yield eval_pb2.EvaluateProgress(
            phase="done", samples_done=result.total_samples, samples_total=result.total_samples,
            result=self._response(result))

    def _response(self, result: EvalResult) -> eval_pb2.EvaluateResponse:
        cfg = self.config
        return message_from(
            eval_pb2.EvaluateResponse, result,
            per_sample_path=display_path(result.per_sample_path, cfg) if result.per_sample_path else "",
            report_path=display_path(result.report_path, cfg) if result.report_path else "",
        )


def register(runtime: ServiceRuntime) -> list[str]:
    servicer = EvalServicer(runtime.config)
    eval_pb2_grpc.add_EvalServiceServicer_to_server(servicer, runtime.server)
    runtime.limit_defaults(servicer.default_limits)
    runtime.on_shutdown(servicer.limiter.shutdown)
    return [service_full_name(eval_pb2, "EvalService")]

