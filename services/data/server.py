"""DataService servicer: turns protos into plain values and calls the data domain modules."""

from __future__ import annotations

from services.common.admission import limiter_from_config
from services.common.blocking import run_admitted
from services.common.paths import resolve_allowed_path
from services.common.protomap import message_from
from services.common.server import ServiceRuntime, service_full_name
from services.data.processing import ProcessReport, SplitSpec, process_file
from services.common.dataset.validate import ValidationReport, validate_file
from wintrain.data.v1 import data_pb2, data_pb2_grpc


def validation_to_proto(report: ValidationReport) -> data_pb2.ValidateDatasetResponse:
    stats = report.stats
    return message_from(
        data_pb2.ValidateDatasetResponse, report,
        issues=[message_from(data_pb2.DatasetIssue, i) for i in report.issues],
        stats=message_from(
            data_pb2.DatasetStats, stats,
            turns=message_from(data_pb2.LengthStats, stats.turns),
            chars=message_from(data_pb2.LengthStats, stats.chars),
        ),
    )


def process_to_proto(report: ProcessReport) -> data_pb2.ProcessDatasetResponse:
    return message_from(
        data_pb2.ProcessDatasetResponse, report,
        output_dir=str(report.output_dir),
        files=[message_from(data_pb2.OutputFile, f, path=str(f.path)) for f in report.files],
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
