"""In-process tests of the shared server bootstrap: health, reflection, errors, shutdown."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import InvalidArgument, NotFound
from services.common.rpc_status import decode_rpc_error
from services.common.server import service_full_name
from tests.support import InProcessServer, make_config
from wintrain.data.v1 import data_pb2, data_pb2_grpc


class ProbeServicer(data_pb2_grpc.DataServiceServicer):
    """A stand-in servicer that fails in the ways the bootstrap must translate."""

    async def ValidateDataset(self, request, context):
        if request.file_path == "boom":
            raise RuntimeError("secret internal detail /etc/passwd")
        if request.file_path == "missing":
            raise NotFound("file_path: 'missing' does not exist")
        if request.file_path == "bad":
            raise InvalidArgument.for_field("file_path", "must end with .jsonl")
        return data_pb2.ValidateDatasetResponse(is_valid=True, total_samples=1)


def register_probe(runtime):
    data_pb2_grpc.add_DataServiceServicer_to_server(ProbeServicer(), runtime.server)
    return [service_full_name(data_pb2, "DataService")]


@pytest.fixture
def probe(tmp_path):
    cfg = make_config(tmp_path / "ws", tmp_path / "no-model")
    with InProcessServer(cfg, "data", register_probe) as server:
        yield server


def test_health_serving_then_not_serving_on_shutdown(probe):
    stub = health_pb2_grpc.HealthStub(probe.channel())
    for name in ("", "wintrain.data.v1.DataService"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    # Drain: health must flip before the server goes away.
    probe.call(probe.runtime.set_serving(False))
    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_service(probe):
    stub = reflection_pb2_grpc.ServerReflectionStub(probe.channel())
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "wintrain.data.v1.DataService" in names
    assert "grpc.health.v1.Health" in names


def _v1_reflection(channel, *requests):
    """A grpc.reflection.v1 client (what newer grpcurl and Postman ask first)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    request_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                 request_serializer=request_cls.SerializeToString,
                                 response_deserializer=response_cls.FromString)
    responses = list(call(iter([request_cls(**r) for r in requests]), timeout=5))
    return responses, descriptor_pb2.FileDescriptorProto


def test_reflection_v1_lists_and_describes(probe):
    responses, file_proto = _v1_reflection(probe.channel(), {"list_services": ""},
                                           {"file_containing_symbol": "wintrain.data.v1.DataService"},
                                           {"file_containing_symbol": "grpc.reflection.v1.ServerReflection"})
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"wintrain.data.v1.DataService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    for response, package in ((responses[1], "wintrain.data.v1"), (responses[2], "grpc.reflection.v1")):
        assert not response.HasField("error_response"), response.error_response
        files = [file_proto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto]
        assert package in {f.package for f in files}


def test_unknown_method_is_unimplemented(probe):
    call = probe.channel().unary_unary("/wintrain.data.v1.DataService/NoSuchMethod",
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_exception_becomes_internal_without_traceback(probe):
    stub = data_pb2_grpc.DataServiceStub(probe.channel())
    with pytest.raises(grpc.RpcError) as err:
        stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path="boom"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
    assert "request id" in err.value.details()


def test_domain_errors_carry_code_and_field_violations(probe):
    stub = data_pb2_grpc.DataServiceStub(probe.channel())
    with pytest.raises(grpc.RpcError) as err:
        stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path="bad"), timeout=5)
    failure = decode_rpc_error(err.value)
    assert failure.code == "INVALID_ARGUMENT"
    assert failure.field_violations == [("file_path", "must end with .jsonl")]
    with pytest.raises(grpc.RpcError) as err:
        stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path="missing"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_request_id_is_echoed(probe):
    stub = data_pb2_grpc.DataServiceStub(probe.channel())
    _, call = stub.ValidateDataset.with_call(data_pb2.ValidateDatasetRequest(file_path="ok"),
                                             metadata=(("x-request-id", "abc123"),), timeout=5)
    assert ("x-request-id", "abc123") in [(m.key, m.value) for m in call.initial_metadata()]
