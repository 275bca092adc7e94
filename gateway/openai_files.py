"""OpenAI's Files API for fine-tuning data (issue 19): `/v1/files`.

- `POST /v1/files` (multipart/form-data: `file`, `purpose`) stores the upload in the
  workspace, under `openai/files/<id>.jsonl` with its file object beside it in
  `<id>.json`; both are written to a temporary name and renamed into place, so a file is
  there whole or not at all. Beyond `api.max_upload_bytes` (default 100 MiB) the answer is
  413. A `fine-tune` upload must be JSONL whose every line is a JSON object in one of the
  two fine-tuning shapes, chat (`messages`) or preference (`input` + `preferred_output` +
  `non_preferred_output`); the row rules themselves (roles, empty texts…) are the dataset
  library's and are checked when a job uses the file (the job fails naming line and field).
- `GET /v1/files` (`purpose`, `after`, `limit`, `order`), `GET /v1/files/{id}`,
  `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

Multipart bodies are parsed with the standard library's email parser (no new dependency);
the whole body is held in memory, bounded by the size limit.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError, dumps, openai_error_body
from gateway.openai_protocol import FILE_PURPOSES, FILES_PAGE, UPLOAD_PURPOSES, PageLimit

FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,64}$")
PURPOSES = FILE_PURPOSES  # declared once, with the OpenAPI shapes (gateway.openai_protocol)
DEFAULT_MAX_UPLOAD = 100 * 1024 * 1024


def openai_json(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


def openai_error(err: GatewayError, status: int | None = None) -> Response:
    return Response(dumps(openai_error_body(err)), status_code=status or err.status, media_type="application/json")


def invalid(param: str, message: str) -> GatewayError:
    return GatewayError("INVALID_ARGUMENT", f"{param}: {message}" if param else message, [(param, message)])


def not_found(param: str, message: str) -> GatewayError:
    return GatewayError("NOT_FOUND", message, [(param, message)])


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_fine_tune_jsonl(data: bytes) -> None:
    """Every non-blank line a JSON object in the chat or the preference shape."""
    if not data.strip():
        raise invalid("file", "is empty; a fine-tune file is JSONL, one example per line")
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except UnicodeDecodeError:
            raise invalid("file", f"line {number}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise invalid("file", f"line {number}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise invalid("file", f"line {number}: expected a JSON object")
        if isinstance(row.get("messages"), list):
            continue
        if isinstance(row.get("input"), dict) and "preferred_output" in row and "non_preferred_output" in row:
            continue
        if "prompt" in row and "chosen" in row and "rejected" in row:
            continue
        raise invalid("file", f"line {number}: expected a chat row ({{\"messages\": [...]}}) or a preference row "
                              "({\"input\": {\"messages\": [...]}, \"preferred_output\": [...], "
                              "\"non_preferred_output\": [...]})")


def training_copy(data: bytes) -> bytes:
    """The file as the training service reads it, line for line (line numbers stay): a chat
    row's `messages` become the `conversations` of the dataset library's own format;
    preference rows (read by the library as they are) and unparsable lines are kept."""
    out = []
    for line in data.split(b"\n"):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            line = json.dumps({"conversations": row["messages"]}, ensure_ascii=False).encode()
        out.append(line)
    return b"\n".join(out)


def openai_words(message: str) -> str:
    """A dataset library message about a training copy, in the uploaded file's words."""
    return message.replace('"conversations"', '"messages"').replace("conversations", "messages")


class FileStore:
    """The uploaded files, in `<workspace>/openai/files`."""

    def __init__(self, workspace: Path):
        self.workspace = Path(workspace)
        self.folder = self.workspace / "openai" / "files"

    def content_path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.jsonl"

    def training_path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.train.jsonl"

    def relative_path(self, file_id: str) -> str:
        """The path a training task reads, relative to the workspace (what the services
        accept): the training copy of a fine-tune file, else the content itself."""
        path = self.training_path(file_id)
        return str((path if path.is_file() else self.content_path(file_id)).relative_to(self.workspace))

    def add(self, data: bytes, filename: str, purpose: str, file_id: str | None = None) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        file_id = file_id or f"file-{uuid.uuid4().hex[:24]}"
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        if purpose == "fine-tune":
            atomic_write(self.training_path(file_id), training_copy(data))
        atomic_write(self.content_path(file_id), data)
        atomic_write(self.folder / f"{file_id}.json", dumps({**obj, "_order": time.time_ns()}))
        return obj

    def get(self, file_id: str) -> dict | None:
        obj = self._read(file_id)
        return None if obj is None else {k: v for k, v in obj.items() if k != "_order"}

    def _read(self, file_id: str) -> dict | None:
        if not FILE_ID.match(file_id or ""):
            return None
        try:
            obj = json.loads((self.folder / f"{file_id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return obj if self.content_path(file_id).is_file() else None

    def all(self) -> list[dict]:
        if not self.folder.is_dir():
            return []
        found = [self._read(p.stem) for p in self.folder.glob("file-*.json")]
        ordered = sorted((f for f in found if f), key=lambda f: (f.get("_order", 0), f["created_at"], f["id"]))
        return [{k: v for k, v in f.items() if k != "_order"} for f in ordered]

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        (self.folder / f"{file_id}.json").unlink(missing_ok=True)
        self.content_path(file_id).unlink(missing_ok=True)
        self.training_path(file_id).unlink(missing_ok=True)
        return True


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename or None, bytes)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise invalid("file", "the request must be multipart/form-data with `file` and `purpose` parts")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise invalid("file", "malformed multipart body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def page(items: list[dict], after: str | None, limit: int, param_after: str = "after") -> dict:
    """A cursor page: the items after the one with id `after`, at most `limit`."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise invalid(param_after, f"no object with id {after!r} in this list")
        start = ids.index(after) + 1
    chunk = items[start:start + limit]
    out = {"object": "list", "data": chunk, "has_more": start + limit < len(items)}
    if chunk:
        out["first_id"], out["last_id"] = chunk[0]["id"], chunk[-1]["id"]
    return out


def limit_of(request: Request, bounds: PageLimit) -> int:
    """The request's `limit` query parameter within `bounds` (declared, for the OpenAPI document too, in
    gateway.openai_protocol); out of them, 400 naming `limit`."""
    default, maximum = bounds
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid("limit", f"must be an integer, got {raw!r}") from None
    if not 1 <= value <= maximum:
        raise invalid("limit", f"must be between 1 and {maximum}, got {value}")
    return value


class OpenAIFiles:
    def __init__(self, config):
        self.store = FileStore(config.workspace)
        self.max_bytes = int(config.get("api.max_upload_bytes", DEFAULT_MAX_UPLOAD) or DEFAULT_MAX_UPLOAD)

    async def _read_limited(self, request: Request) -> bytes:
        too_big = GatewayError("INVALID_ARGUMENT", f"file: the upload exceeds api.max_upload_bytes ({self.max_bytes})",
                               [("file", f"larger than api.max_upload_bytes ({self.max_bytes} bytes)")])
        slack = 64 * 1024  # the multipart framing around the file
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes + slack:
            raise _TooLarge(too_big)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes + slack:
                raise _TooLarge(too_big)
            chunks.append(chunk)
        return b"".join(chunks)

    async def create(self, request: Request) -> Response:
        try:
            body = await self._read_limited(request)
            fields = parse_multipart(request.headers.get("content-type", ""), body)
            purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
            if not purpose:
                raise invalid("purpose", "is required (fine-tune for fine-tuning data)")
            if purpose not in UPLOAD_PURPOSES:
                raise invalid("purpose", f"must be one of {', '.join(UPLOAD_PURPOSES)}; got {purpose!r}")
            if "file" not in fields:
                raise invalid("file", "is required (the multipart part named `file`)")
            filename, data = fields["file"]
            if len(data) > self.max_bytes:
                raise _TooLarge(GatewayError(
                    "INVALID_ARGUMENT", f"file: {len(data)} bytes exceed api.max_upload_bytes ({self.max_bytes})",
                    [("file", f"larger than api.max_upload_bytes ({self.max_bytes} bytes)")]))
            if purpose == "fine-tune":
                check_fine_tune_jsonl(data)
            obj = self.store.add(data, os.path.basename(filename or "upload.jsonl"), purpose)
        except _TooLarge as exc:
            return openai_error(exc.error, 413)
        except GatewayError as err:
            return openai_error(err)
        return openai_json(obj)

    async def list(self, request: Request) -> Response:
        try:
            limit = limit_of(request, FILES_PAGE)
            purpose = request.query_params.get("purpose")
            order = request.query_params.get("order", "desc")
            if order not in ("asc", "desc"):
                raise invalid("order", f"must be asc or desc, got {order!r}")
            items = [f for f in self.store.all() if purpose is None or f["purpose"] == purpose]
            if order == "desc":
                items.reverse()
            return openai_json(page(items, request.query_params.get("after"), limit))
        except GatewayError as err:
            return openai_error(err)

    def _file(self, request: Request) -> dict:
        file_id = request.path_params["file_id"]
        obj = self.store.get(file_id)
        if obj is None:
            raise not_found("file_id", f"No such file: {file_id!r}")
        return obj

    async def retrieve(self, request: Request) -> Response:
        try:
            return openai_json(self._file(request))
        except GatewayError as err:
            return openai_error(err)

    async def content(self, request: Request) -> Response:
        try:
            obj = self._file(request)
            data = self.store.content_path(obj["id"]).read_bytes()
        except GatewayError as err:
            return openai_error(err)
        except OSError:
            return openai_error(not_found("file_id", f"No such file: {request.path_params['file_id']!r}"))
        media = "text/csv" if obj["filename"].endswith(".csv") else "application/octet-stream"
        return Response(data, media_type=media)

    async def delete(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if not self.store.delete(file_id):
            return openai_error(not_found("file_id", f"No such file: {file_id!r}"))
        return openai_json({"id": file_id, "object": "file", "deleted": True})

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create, methods=["POST"], name="openai-files-create"),
            Route("/v1/files", self.list, methods=["GET"], name="openai-files-list"),
            Route("/v1/files/{file_id}", self.retrieve, methods=["GET"], name="openai-files-get"),
            Route("/v1/files/{file_id}", self.delete, methods=["DELETE"], name="openai-files-delete"),
            Route("/v1/files/{file_id}/content", self.content, methods=["GET"], name="openai-files-content"),
        ]


class _TooLarge(Exception):
    def __init__(self, error: GatewayError):
        super().__init__(error.message)
        self.error = error
