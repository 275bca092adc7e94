"""DataService servicer: turns protos into plain values and calls the data domain modules."""

from __future__ import annotations

from services.common.admission import limiter_from_config
from services.common.blocking import run_admitted
from services.common.paths import resolve_allowed_path
from services.common.server import ServiceRuntime, service_full_name
from services.data.processing import ProcessReport, SplitSpec, process_file
from services.common.dataset.validate import LengthStats, ValidationReport, validate_file
from wintrain.data.v1 import data_pb2, data_pb2_grpc


def _length_stats(stats: LengthStats) -> data_pb2.LengthStats:
    return data_pb2.LengthStats(min=stats.min, p50=stats.p50, p90=stats.p90, p99=stats.p99,
                                max=stats.max, mean=stats.mean)


def validation_to_proto(report: ValidationReport) -> data_pb2.ValidateDatasetResponse:
    return data_pb2.ValidateDatasetResponse(
        is_valid=report.is_valid,
        total_samples=report.total_samples,
        valid_samples=report.valid_samples,
        invalid_samples=report.invalid_samples,
        error_messages=report.error_messages,
        issues=[data_pb2.DatasetIssue(line=i.line, field=i.field, code=i.code, message=i.message)
                for i in report.issues],
        stats=data_pb2.DatasetStats(
            messages_per_role=report.stats.messages_per_role,
            turns=_length_stats(report.stats.turns),
            chars=_length_stats(report.stats.chars),
            exact_duplicates=report.stats.exact_duplicates,
        ),
        errors_truncated=report.errors_truncated,
        detected_format=report.detected_format,
        issue_counts=report.issue_counts,
        file_kind=report.file_kind,
    )


def process_to_proto(report: ProcessReport) -> data_pb2.ProcessDatasetResponse:
    return data_pb2.ProcessDatasetResponse(
        output_dir=str(report.output_dir),
        total_samples=report.total_samples,
        kept_samples=report.kept_samples,
        train_samples=report.train_samples,
        val_samples=report.val_samples,
        test_samples=report.test_samples,
        dropped=report.dropped,
        duplicates_removed=report.duplicates_removed,
        files=[data_pb2.OutputFile(path=str(f.path), rows=f.rows, size_bytes=f.size_bytes) for f in report.files],
        detected_format=report.detected_format,
        repairs=report.repairs,
    )


class DataServicer(data_pb2_grpc.DataServiceServicer):
    def __init__(self, config):
        self.config = config
        self.max_errors = int(config.get("dataset.max_errors", 50))
        self.max_row_bytes = int(config.get("dataset.max_row_bytes", 1 << 20))
        self.limiter = limiter_from_config(config, "dataset", what="dataset passes", max_concurrent=2, max_queue=8)

    async def ValidateDataset(self, request, context):
        path = resolve_allowed_path(request.file_path, self.config, field="file_path", must_exist=True)
        report = await run_admitted(self.limiter, validate_file, path, max_errors=self.max_errors,
                                    max_row_bytes=self.max_row_bytes, field="file_path", context=context)
        return validation_to_proto(report)

    async def ProcessDataset(self, request, context):
        source = resolve_allowed_path(request.input_file, self.config, field="input_file", must_exist=True)
        out_dir = resolve_allowed_path(request.output_dir, self.config, field="output_dir", expect="dir")
        split = None
        if request.HasField("split_config"):
            sc = request.split_config
            split = SplitSpec(train_ratio=sc.train_ratio, val_ratio=sc.val_ratio, test_ratio=sc.test_ratio,
                              shuffle=sc.shuffle, seed=sc.seed)
        report = await run_admitted(self.limiter, process_file, source, out_dir, format_type=request.format_type,
                                    split=split, overwrite=request.overwrite,
                                    max_row_bytes=self.max_row_bytes, context=context)
        return process_to_proto(report)


def register(runtime: ServiceRuntime) -> list[str]:
    servicer = DataServicer(runtime.config)
    data_pb2_grpc.add_DataServiceServicer_to_server(servicer, runtime.server)
    runtime.on_shutdown(servicer.limiter.shutdown)
    return [service_full_name(data_pb2, "DataService")]
