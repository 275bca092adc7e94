"""The gateway is generic: an RPC it has never seen, annotated with `google.api.http` (and our
options), is served over HTTP and documented in /openapi.json with no gateway code. The
service here is built at run time from a descriptor, not from a .proto in the repository."""

from __future__ import annotations

import types

import grpc
import httpx
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from openapi_spec_validator import validate

from gateway.routes import routes_of_module
from tests.gateway.helpers import GatewayServer, all_at
from tests.support import InProcessServer
from wintrain.api.v1 import options_pb2


def _probe_module():
    """A proto file `wintrain.probe.v1` with `Echo(EchoRequest) returns (EchoReply)` bound to
    `POST /api/probe/{name}/echo` with `body: "*"`, and an enum with JSON words."""
    fdp = descriptor_pb2.FileDescriptorProto(name="wintrain/probe/v1/probe_test.proto", package="wintrain.probe.v1",
                                             syntax="proto3",
                                             dependency=["google/api/annotations.proto", "wintrain/api/v1/options.proto"])
    color = fdp.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    red = color.value.add(name="COLOR_RED", number=1)
    red.options.Extensions[options_pb2.json_name] = "red"
    req = fdp.message_type.add(name="EchoRequest")
    req.field.add(name="name", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    req.field.add(name="count", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    req.field.add(name="color", number=3, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                  type_name=".wintrain.probe.v1.Color", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    reply = fdp.message_type.add(name="EchoReply")
    reply.field.add(name="text", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    reply.field.add(name="count", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    reply.field.add(name="color", number=3, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                    type_name=".wintrain.probe.v1.Color", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    service = fdp.service.add(name="ProbeService")
    method = service.method.add(name="Echo", input_type=".wintrain.probe.v1.EchoRequest",
                                output_type=".wintrain.probe.v1.EchoReply")
    rule = method.options.Extensions[annotations_pb2.http]
    rule.post = "/api/probe/{name}/echo"
    rule.body = "*"
    method.options.Extensions[options_pb2.http_envelope].message = "Echoed"
    pool = descriptor_pool.Default()
    try:
        file_desc = pool.FindFileByName(fdp.name)
    except KeyError:
        file_desc = pool.Add(fdp) or pool.FindFileByName(fdp.name)
    return types.SimpleNamespace(DESCRIPTOR=file_desc)


def test_an_unseen_annotated_rpc_is_served_and_documented(base_config):
    module = _probe_module()
    specs = routes_of_module("data", module)  # served by the backend configured as `data`
    assert [(s.http_method, s.template, s.body) for s in specs] == [("POST", "/api/probe/{name}/echo", "*")]
    request_cls = message_factory.GetMessageClass(module.DESCRIPTOR.message_types_by_name["EchoRequest"])
    reply_cls = message_factory.GetMessageClass(module.DESCRIPTOR.message_types_by_name["EchoReply"])

    async def echo(request, context):
        return reply_cls(text=f"hello {request.name}", count=request.count * 2, color=request.color)

    def register(runtime):
        handler = grpc.method_handlers_generic_handler("wintrain.probe.v1.ProbeService", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=request_cls.FromString,
                                                        response_serializer=reply_cls.SerializeToString)})
        runtime.server.add_generic_rpc_handlers((handler,))
        return ["wintrain.probe.v1.ProbeService"]

    with InProcessServer(base_config, "data", register) as backend, \
            GatewayServer(all_at(base_config, backend.port), specs=specs) as gw, \
            httpx.Client(base_url=gw.url, timeout=10) as client:
        r = client.post("/api/probe/world/echo", json={"count": 2**40, "color": "red", "unknown": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True and body["message"] == "Echoed"
        assert body["data"] == {"text": "hello world", "count": 2**41, "color": "red"}
        assert client.post("/api/probe/world/echo", json={"color": "blue"}).status_code == 400
        doc = client.get("/openapi.json").json()
        validate(doc)
        op = doc["paths"]["/api/probe/{name}/echo"]["post"]
        assert op["x-grpc-method"] == "/wintrain.probe.v1.ProbeService/Echo"
        assert doc["components"]["schemas"]["wintrain.probe.v1.Color"]["enum"] == ["COLOR_UNSPECIFIED", "red"]
