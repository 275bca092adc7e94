"""HTTP answers of the gateway: compact JSON bodies, the error shape, the original API's
response envelope, and the header naming ignored request keys."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from google.protobuf.message import Message
from starlette.responses import Response

from gateway.errors import GatewayError, dumps
from gateway.jsonmap import message_to_json
from gateway.routes import RouteSpec
from services.common.metadata import IGNORED_FIELDS_HEADER

JSON_MEDIA_TYPE = "application/json"


class JSONBytesResponse(Response):
    media_type = JSON_MEDIA_TYPE


def json_response(obj: Any, status: int = 200) -> Response:
    return JSONBytesResponse(dumps(obj), status_code=status)


def error_response(err: GatewayError) -> Response:
    return JSONBytesResponse(err.json_bytes(), status_code=err.status)


def ignored_header(ignored: list[str]) -> dict[str, str]:
    """The header naming request keys the API does not know (ignored, as the original API did),
    bounded. The names arrive percent-encoded (`jsonmap.note_ignored`); anything else outside
    printable ASCII is percent-encoded here too, so the header can never break the answer."""
    if not ignored:
        return {}
    shown = ignored[:20] + ([f"... {len(ignored) - 20} more"] if len(ignored) > 20 else [])
    text = ", ".join(item[:200] for item in shown)
    return {IGNORED_FIELDS_HEADER: "".join(c if " " <= c <= "~" else quote(c) for c in text).strip()}


def with_ignored(response: Response, ignored: list[str]) -> Response:
    response.headers.update(ignored_header(ignored))
    return response



def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def render_response(spec: RouteSpec, message: Message) -> Any:
    """The HTTP JSON of a unary response: `response_body` selects a field; the envelope (when
    the RPC declares one) wraps it as the original API did."""
    data = message_to_json(message)
    if spec.response_body:
        data = data.get(spec.response_body)
    env = spec.envelope
    if env is None:
        return data
    success = bool(data.get(env.success_field, False)) if env.success_field else True
    payload = data.get(env.data_field) if env.data_field else data
    out = {"success": success, "message": env.message, "data": payload, "timestamp": _now_iso()}
    if env.data_field:
        for key, value in data.items():
            if key != env.data_field and key not in out:
                out[key] = value
    return out
