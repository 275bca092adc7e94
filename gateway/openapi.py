"""The OpenAPI 3 document of the gateway, generated from the same descriptors as the routes,
and the offline Swagger UI page (`/docs`, assets from the `swagger_ui_bundle` package).

Schemas come from the message descriptors (enum JSON words, 64-bit integers as numbers,
declared `(wintrain.api.v1.default_value)` defaults, the envelope where declared, streams as
`text/event-stream`). Descriptions are the comments of the .proto sources, extracted at build
time (`make protos`, or `python -m gateway.openapi --write-comments`) into proto_comments.json
beside this module: the gateway needs neither protoc (grpcio-tools) nor the .proto sources at
run time. tests/gateway/test_openapi_comments.py fails when that file is stale.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.jsonmap import enum_words
from gateway.routes import RouteSpec
from services.common.proto_rules import field_rules, is_required
from wintrain.api.v1 import options_pb2

log = logging.getLogger("wintrain.gateway")
F = FieldDescriptor
REF = "#/components/schemas/"

_SCALARS: dict[int, dict] = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    # Integer bounds are the type's: the gateway refuses a number out of them (400).
    F.TYPE_INT64: {"type": "integer", "format": "int64", "minimum": -2**63, "maximum": 2**63 - 1},
    F.TYPE_SINT64: {"type": "integer", "format": "int64", "minimum": -2**63, "maximum": 2**63 - 1},
    F.TYPE_SFIXED64: {"type": "integer", "format": "int64", "minimum": -2**63, "maximum": 2**63 - 1},
    F.TYPE_UINT64: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**64 - 1},
    F.TYPE_FIXED64: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**64 - 1},
    F.TYPE_INT32: {"type": "integer", "format": "int32", "minimum": -2**31, "maximum": 2**31 - 1},
    F.TYPE_SINT32: {"type": "integer", "format": "int32", "minimum": -2**31, "maximum": 2**31 - 1},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32", "minimum": -2**31, "maximum": 2**31 - 1},
    F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object", "additionalProperties": True},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": {"type": "integer", "format": "int64"},
    "google.protobuf.UInt64Value": {"type": "integer", "format": "int64"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int64"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error answer. `code` is the canonical gRPC code; `details` lists the "
                   "field violations of a bad request.",
    "required": ["success", "message", "code", "details"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "message": {"type": "string"},
        "code": {"type": "string", "example": "INVALID_ARGUMENT"},
        "details": {"type": "array", "items": {
            "type": "object",
            "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
        }},
        "service": {"type": "string", "description": "The backend that could not be reached (503)."},
    },
}


STREAM_ERROR_SCHEMA = {
    "type": "object",
    "description": "The last event of a stream that failed after it started (then `[DONE]`).",
    "required": ["error"],
    "properties": {"error": {"$ref": REF + "Error"}},
}


def _plain(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


# --------------------------------------------------------------------------- comments
COMMENTS_FILE = Path(__file__).with_name("proto_comments.json")


def proto_comments() -> dict[str, str]:
    """The proto comments by full name, as extracted at build time. Empty (and a warning) when
    the file is missing: the document is then the same, minus descriptions."""
    try:
        return json.loads(COMMENTS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("no proto comments for the OpenAPI document (%s): run `make protos`", exc)
        return {}


def extract_proto_comments(proto_root: Path | None = None) -> dict[str, str]:
    """Build time: leading comments of services, methods, messages, fields, enums and enum
    values, by full name, read by running protoc with source info over the .proto sources."""
    from importlib import resources

    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    root = proto_root or Path(__file__).resolve().parents[1] / "protos"
    sources = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto") if "node_modules" not in p.parts)
    googleapis = Path(annotations_pb2.__file__).resolve().parents[2]
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.pb"
        code = protoc.main(["protoc", f"-I{root}", f"-I{googleapis}", f"-I{well_known}",
                            "--include_source_info", f"--descriptor_set_out={out}", *sources])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    comments: dict[str, str] = {}
    for file in fds.file:
        names = _names_by_path(file)
        for loc in file.source_code_info.location:
            name = names.get(tuple(loc.path))
            text = loc.leading_comments.strip()
            if name and text:
                comments[name] = re.sub(r"\s*\n\s*", " ", text)
    return dict(sorted(comments.items()))


def comments_json(comments: dict[str, str]) -> str:
    return json.dumps(comments, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def _names_by_path(file) -> dict[tuple, str]:
    """Source-info paths (FileDescriptorProto field numbers) -> full names."""
    out: dict[tuple, str] = {}
    prefix = file.package + "." if file.package else ""

    def enum(path: tuple, proto, scope: str) -> None:
        full = scope + proto.name
        out[path] = full
        for i, value in enumerate(proto.value):
            out[path + (2, i)] = f"{full}.{value.name}"

    def message(path: tuple, proto, scope: str) -> None:
        full = scope + proto.name
        out[path] = full
        for i, fld in enumerate(proto.field):
            out[path + (2, i)] = f"{full}.{fld.name}"
        for i, nested in enumerate(proto.nested_type):
            message(path + (3, i), nested, full + ".")
        for i, nested in enumerate(proto.enum_type):
            enum(path + (4, i), nested, full + ".")

    for i, msg in enumerate(file.message_type):
        message((4, i), msg, prefix)
    for i, en in enumerate(file.enum_type):
        enum((5, i), en, prefix)
    for i, svc in enumerate(file.service):
        full = prefix + svc.name
        out[(6, i)] = full
        for j, method in enumerate(svc.method):
            out[(6, i, 2, j)] = f"{full}.{method.name}"
    return out


# --------------------------------------------------------------------------- schemas
class SchemaBuilder:
    def __init__(self, comments: dict[str, str]):
        self.comments = comments
        self.schemas: dict[str, dict] = {}

    def describe(self, schema: dict, full_name: str) -> dict:
        text = self.comments.get(full_name)
        if text:
            schema["description"] = text
        return schema

    def enum(self, desc: EnumDescriptor) -> dict:
        if desc.full_name not in self.schemas:
            words = enum_words(desc)[0]
            lines = []
            for v in desc.values:
                text = self.comments.get(f"{desc.full_name}.{v.name}", "")
                lines.append(f"`{words[v.name]}`: {text}" if text else f"`{words[v.name]}`")
            schema = {"type": "string", "enum": [words[v.name] for v in desc.values]}
            text = self.comments.get(desc.full_name, "")
            schema["description"] = (text + "\n\n" if text else "") + "\n".join(f"- {line}" for line in lines)
            self.schemas[desc.full_name] = schema
        return {"$ref": REF + desc.full_name}

    def message(self, desc: Descriptor) -> dict:
        if desc.full_name in _WELL_KNOWN:
            return copy.deepcopy(_WELL_KNOWN[desc.full_name])
        if desc.full_name not in self.schemas:
            self.schemas[desc.full_name] = {}  # placeholder: recursive types refer to it
            props = {fd.name: self.field(fd) for fd in desc.fields}
            schema = self.describe({"type": "object", "properties": props}, desc.full_name)
            required = [fd.name for fd in desc.fields if is_required(fd)]
            if required:
                schema["required"] = required
            self.schemas[desc.full_name] = schema
        return {"$ref": REF + desc.full_name}

    def constrain(self, fd: FieldDescriptor, schema: dict) -> None:
        """What the server checks where a request enters (services.common.proto_rules), from
        the same options: REQUIRED (never null, never empty) and the declared bounds. Any other
        field may be null in JSON (read as unset)."""
        rules = field_rules(fd)
        is_list = schema.get("type") == "array"
        target = schema["items"] if is_list else schema
        if rules is not None:
            if rules.HasField("minimum"):
                target["minimum"] = _plain(rules.minimum)
                if rules.exclusive_minimum:
                    target["exclusiveMinimum"] = True
            if rules.HasField("maximum"):
                target["maximum"] = _plain(rules.maximum)
                if rules.exclusive_maximum:
                    target["exclusiveMaximum"] = True
            if rules.HasField("min_length"):
                schema["minItems" if is_list else "minLength"] = rules.min_length
            if rules.HasField("max_length"):
                schema["maxItems" if is_list else "maxLength"] = rules.max_length
        if is_required(fd):
            if is_list:
                schema["minItems"] = max(1, schema.get("minItems", 1))
            elif schema.get("type") == "string":
                schema["minLength"] = max(1, schema.get("minLength", 1))
        else:
            schema["nullable"] = True

    def value(self, fd: FieldDescriptor) -> dict:
        if fd.message_type is not None:
            return self.message(fd.message_type)
        if fd.enum_type is not None:
            return self.enum(fd.enum_type)
        return dict(_SCALARS[fd.type])

    def field(self, fd: FieldDescriptor) -> dict:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            schema = {"type": "object", "additionalProperties": self.value(fd.message_type.fields_by_name["value"])}
        elif fd.is_repeated:
            schema = {"type": "array", "items": self.value(fd)}
        else:
            schema = self.value(fd)
            if "$ref" in schema:
                schema = {"allOf": [schema]}  # siblings of $ref are ignored in OpenAPI 3.0
        self.constrain(fd, schema)
        if schema.get("nullable") and "allOf" in schema:
            # `nullable` beside `allOf` does not admit null in OpenAPI 3.0: null is its own option.
            del schema["nullable"]
            schema["anyOf"] = [*schema.pop("allOf"), {"nullable": True, "enum": [None]}]
        opts = fd.GetOptions()
        if opts.HasExtension(options_pb2.default_value):
            raw = opts.Extensions[options_pb2.default_value]
            if raw:
                try:
                    schema["default"] = json.loads(raw)
                except ValueError:
                    log.warning("bad default_value on %s: %r", fd.full_name, raw)
        text = self.comments.get(fd.full_name, "")
        if text:
            schema["description"] = text
        return schema


# --------------------------------------------------------------------------- document
def _openapi_path(template: str) -> str:
    return re.sub(r"\{([^{}=]+)(?:=[^{}]+)?\}", lambda m: "{" + m.group(1).strip() + "}", template)


def _query_parameters(builder: SchemaBuilder, desc: Descriptor, skip: set[str], prefix: str = "",
                      depth: int = 0, seen: frozenset = frozenset()) -> list[dict]:
    params: list[dict] = []
    for fd in desc.fields:
        if not prefix and fd.name in skip:
            continue
        name = prefix + fd.name
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if is_map or (fd.message_type is not None and fd.is_repeated):
            continue  # not expressible in a query string
        if fd.message_type is not None and fd.message_type.full_name not in _WELL_KNOWN:
            if depth < 3 and fd.message_type.full_name not in seen:
                params += _query_parameters(builder, fd.message_type, skip, name + ".", depth + 1,
                                            seen | {desc.full_name})
            continue
        schema = builder.field(fd)
        description = schema.pop("description", None)
        param = {"name": name, "in": "query", "required": not prefix and is_required(fd), "schema": schema}
        if fd.is_repeated:
            param.update(style="form", explode=True)
        if description:
            param["description"] = description
        params.append(param)
    return params


def _path_parameters(builder: SchemaBuilder, spec: RouteSpec) -> list[dict]:
    params = []
    for var in spec.variables:
        desc, fd = spec.method.input_type, None
        for name in var.field_path:
            fd = desc.fields_by_name[name]
            desc = fd.message_type
        schema = builder.field(fd)
        description = schema.pop("description", None)
        param = {"name": ".".join(var.field_path), "in": "path", "required": True, "schema": schema}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _request_body(builder: SchemaBuilder, spec: RouteSpec) -> dict | None:
    if not spec.body:
        return None
    desc = spec.method.input_type
    if spec.body == "*":
        schema = builder.message(desc)
        if spec.bound_fields:  # the body carries the fields the path does not
            name = desc.full_name + ".Body"
            body = copy.deepcopy(builder.schemas[desc.full_name])
            for field_name in spec.bound_fields:
                body["properties"].pop(field_name, None)
            if "required" in body:
                body["required"] = [n for n in body["required"] if n not in spec.bound_fields]
                if not body["required"]:
                    del body["required"]
            builder.schemas[name] = body
            schema = {"$ref": REF + name}
    else:
        schema = builder.field(desc.fields_by_name[spec.body])
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _response_schema(builder: SchemaBuilder, spec: RouteSpec) -> dict:
    desc = spec.method.output_type
    payload = builder.field(desc.fields_by_name[spec.response_body]) if spec.response_body else builder.message(desc)
    env = spec.envelope
    if env is None:
        return payload
    builder.message(desc)
    props: dict[str, Any] = {
        "success": {"type": "boolean", "description": (
            f"The response's `{env.success_field}`." if env.success_field else "True for every answer of 200.")},
        "message": {"type": "string", "example": env.message},
        "data": builder.field(desc.fields_by_name[env.data_field]) if env.data_field else payload,
        "timestamp": {"type": "string", "format": "date-time"},
    }
    if env.data_field:
        for fd in desc.fields:
            if fd.name != env.data_field and fd.name not in props:
                props[fd.name] = builder.field(fd)
    return {"type": "object", "description": "The original Win-Train envelope.",
            "required": ["success", "message", "data", "timestamp"], "properties": props}


def operation(builder: SchemaBuilder, spec: RouteSpec) -> dict:
    service_name = spec.service.rsplit(".", 1)[-1]
    op: dict[str, Any] = {
        "tags": [service_name],
        "operationId": f"{service_name}_{spec.method.name}" + (
            "" if spec.http_method in ("GET", "POST") else "_" + spec.http_method.lower()),
        "summary": spec.method.name,
        "x-grpc-method": spec.grpc_path,
    }
    text = builder.comments.get(spec.method.full_name)
    if text:
        op["description"] = text
    params = _path_parameters(builder, spec)
    if not spec.body:
        params += _query_parameters(builder, spec.method.input_type, spec.bound_fields)
    elif spec.body != "*":
        params += _query_parameters(builder, spec.method.input_type, spec.bound_fields | {spec.body})
    if params:
        op["parameters"] = params
    body = _request_body(builder, spec)
    if body is not None:
        op["requestBody"] = body
    if spec.streaming:
        event_schema = builder.message(spec.method.output_type)
        ok = {
            "description": (f"Server-Sent Events: one `data: <JSON {spec.method.output_type.name}>` event per "
                            "message, then `data: [DONE]`. A failure after the first event is sent as "
                            "`data: {\"error\": <Error>}` before `[DONE]`."),
            # The schema is each event's `data:` JSON (`[DONE]` aside), not the raw text.
            "content": {"text/event-stream": {"schema": {"anyOf": [event_schema, {"$ref": REF + "StreamError"}]}}},
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": _response_schema(builder, spec)}}}
    op["responses"] = {"200": ok, "default": {"$ref": "#/components/responses/Error"}}
    return op


def build_openapi(specs: list[RouteSpec], version: str, extra_paths: dict | None = None,
                  extra_schemas: dict | None = None, comments: dict[str, str] | None = None) -> dict:
    """The OpenAPI 3.0 document of the discovered routes plus hand-written `extra_paths`."""
    builder = SchemaBuilder(proto_comments() if comments is None else comments)
    paths: dict[str, dict] = {}
    tags: dict[str, dict] = {}
    for spec in specs:
        service_name = spec.service.rsplit(".", 1)[-1]
        if service_name not in tags:
            tags[service_name] = {"name": service_name}
            text = builder.comments.get(spec.service)
            if text:
                tags[service_name]["description"] = text
        paths.setdefault(_openapi_path(spec.template), {})[spec.http_method.lower()] = operation(builder, spec)
    for path, item in (extra_paths or {}).items():
        paths.setdefault(path, {}).update(item)
    schemas = dict(sorted(builder.schemas.items()))
    schemas["Error"] = ERROR_SCHEMA
    schemas["StreamError"] = STREAM_ERROR_SCHEMA
    schemas.update(extra_schemas or {})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Win-Train API",
            "version": version,
            "description": "HTTP/JSON gateway of the Win-Train gRPC services, generated from the "
                           "`google.api.http` annotations of their protos.",
        },
        "tags": list(tags.values()),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": {"description": "An error (4xx/5xx) with the gRPC code and field violations.",
                                    "content": {"application/json": {"schema": {"$ref": REF + "Error"}}}}},
        },
    }


def swagger_ui_html(openapi_url: str, static_url: str, title: str = "Win-Train API") -> str:
    """The Swagger UI page, loading its assets from `static_url` (served locally)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - Swagger UI</title>
  <link rel="stylesheet" href="{static_url}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{static_url}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{static_url}/swagger-ui-bundle.js"></script>
  <script src="{static_url}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{openapi_url}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    }});
  </script>
</body>
</html>
"""


def swagger_ui_dir() -> str:
    import swagger_ui_bundle

    return str(swagger_ui_bundle.swagger_ui_path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gateway.openapi")
    parser.add_argument("--write-comments", action="store_true",
                        help=f"extract the proto comments into {COMMENTS_FILE.name} (build time; needs grpcio-tools)")
    args = parser.parse_args(argv)
    if args.write_comments:
        comments = extract_proto_comments()
        COMMENTS_FILE.write_text(comments_json(comments), encoding="utf-8")
        print(f"wrote {len(comments)} comments to {COMMENTS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
