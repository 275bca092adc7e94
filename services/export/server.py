"""ExportService: a thin servicer over `services.export.exporter`.

The request is checked here (format, opset, every path through the path policy), then the
export and its proof run in a worker thread, one export at a time (`export.max_concurrent`),
with at most `export.max_queue` waiting (RESOURCE_EXHAUSTED beyond). When the client goes
away the worker stops at its next phase boundary and cleans up; the slot is freed only when
the worker has really ended.
"""

from __future__ import annotations

import logging

from services.common.config import Config, ConfigError
from services.common.admission import limiter_from_config
from services.common.blocking import run_admitted
from services.common.paths import client_form, resolve_allowed_path
from services.common.server import ServiceRuntime, service_full_name
from services.export.exporter import (
    ExportResult,
    ExportSpec,
    is_onnx_file_path,
    normalize_format,
    run_export,
    validate_options,
)
from services.export.parity import ParityResult
from wintrain.export.v1 import export_pb2, export_pb2_grpc

log = logging.getLogger("wintrain.export")


def _int_setting(config: Config, key: str, default: int, minimum: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config: {key} must be an integer >= {minimum}, got {value!r}")
    return value


class ExportServicer(export_pb2_grpc.ExportServiceServicer):
    def __init__(self, config: Config):
        self.config = config
        self.limiter = limiter_from_config(config, "export", what="exports", max_concurrent=1, max_queue=4)
        _int_setting(config, "export.parity_new_tokens", 16, 1)

    def spec_from_request(self, request: export_pb2.ExportOnnxRequest) -> ExportSpec:
        """Check a request and resolve its paths. Raises InvalidArgument, PermissionDenied,
        NotFound."""
        cfg = self.config
        fmt = normalize_format(request.export_format)
        validate_options(fmt, request.opset_version, request.quantize, request.output_path)
        output = resolve_allowed_path(request.output_path, cfg, field="output_path",
                                      expect="file" if is_onnx_file_path(request.output_path) else "dir")
        if request.model_path.strip():
            model = resolve_allowed_path(request.model_path, cfg, field="model_path", must_exist=True, expect="dir")
        else:  # like chat and eval: no model named means the configured base model
            model = cfg.base_model_path
        adapter = None
        if request.HasField("lora_adapter_path") and request.lora_adapter_path.strip():
            adapter = resolve_allowed_path(request.lora_adapter_path, cfg, field="lora_adapter_path",
                                           must_exist=True, expect="dir")
        return ExportSpec(model_path=model, output_path=output, export_format=fmt, opset=request.opset_version,
                          lora_adapter_path=adapter, quantize=request.quantize, overwrite=request.overwrite)

    async def ExportOnnx(self, request, context):
        spec = self.spec_from_request(request)
        return self.to_proto(await run_admitted(self.limiter, run_export, spec, self.config, stop="cancel",
                                                context=context), request.output_path)

    def to_proto(self, result: ExportResult, output_path: str = "") -> export_pb2.ExportOnnxResponse:
        """The response; its paths in the form the client sent `output_path` in (absolute or
        relative to the workspace)."""
        cfg = self.config

        def shown(p) -> str:
            return client_form(p, output_path, cfg)
        resp = export_pb2.ExportOnnxResponse(
            success=True,
            message=result.message,
            export_path=shown(result.export_path),
            file_size=result.total_size,
            export_format=result.export_format,
            opset_version=result.opset,
            parity=_parity_proto(result.parity),
            files=[export_pb2.ExportedFile(path=shown(p), size_bytes=size) for p, size in result.files],
            export_time=result.export_time,
        )
        if result.quantized_path is not None and result.quantized_parity is not None:
            resp.quantized_path = shown(result.quantized_path)
            resp.quantized_parity.CopyFrom(_parity_proto(result.quantized_parity))
            resp.quantized_size = result.quantized_size
        return resp


def _parity_proto(p: ParityResult) -> export_pb2.ParityReport:
    return export_pb2.ParityReport(
        max_abs_diff=p.max_abs_diff, tolerance=p.tolerance, tokens_match=p.tokens_match,
        prompts_checked=p.prompts_checked, tokens_per_prompt=p.tokens_per_prompt,
        token_agreement=p.token_agreement,
    )


def register(runtime: ServiceRuntime) -> list[str]:
    servicer = ExportServicer(runtime.config)
    export_pb2_grpc.add_ExportServiceServicer_to_server(servicer, runtime.server)
    runtime.on_shutdown(servicer.limiter.shutdown)
    return [service_full_name(export_pb2, "ExportService")]
