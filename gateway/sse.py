"""Server-Sent Events from a gRPC server-streaming call.

Framing: `data: <json>\\n\\n` per event and `data: [DONE]\\n\\n` at the end. A failure after the
first event becomes `data: {"error": {...the error body...}}` followed by `[DONE]`, never a
silent cut. A failure before anything was sent (bad request, unknown task, backend down)
answers with the mapped HTTP status and the JSON error body instead, when it happens within
`first_event_wait` seconds.

When the HTTP client goes away, the upstream call is cancelled at once: a watcher task waits
for `http.disconnect` for the whole life of the response, independently of the ASGI server's
spec version and of whether an event is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable, Iterable

import grpc

from gateway.errors import GatewayError, dumps

log = logging.getLogger("wintrain.gateway")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def event(payload: Any) -> bytes:
    """One SSE event carrying `payload` as JSON."""
    return b"data: " + dumps(payload) + b"\n\n"


class GrpcEventStream:
    """ASGI response streaming the messages of `call` as SSE events.

    `render(message)` gives the payloads (zero or more) for one gRPC message; `prelude()` the
    payloads to send first (after the first message arrived); `error_payload(err)` the payload
    of a mid-stream error event; `error_response(err)` the (status, body) of an error that
    happens before the stream started.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall,
        render: Callable[[Any], Iterable[Any]],
        to_error: Callable[[grpc.RpcError], GatewayError],
        *,
        prelude: Callable[[], Iterable[Any]] | None = None,
        finale: Callable[[], Iterable[Any]] | None = None,
        error_payload: Callable[[GatewayError], Any] | None = None,
        error_response: Callable[[GatewayError], tuple[int, bytes]] | None = None,
        first_event_wait: float = 2.0,
        headers: dict[str, str] | None = None,
    ):
        self.call = call
        self.extra_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self.render = render
        self.to_error = to_error
        self.prelude = prelude
        self.finale = finale
        self.error_payload = error_payload or (lambda err: {"error": err.body()})
        self.error_response = error_response or (lambda err: (err.status, err.json_bytes()))
        self.first_event_wait = first_event_wait
        self.client_gone = False

    async def __call__(self, scope, receive, send) -> None:
        from gateway.security import HTTP_STREAMS_OPEN

        with HTTP_STREAMS_OPEN.track_inprogress():
            await self._relay(receive, send)

    async def _relay(self, receive, send) -> None:
        worker = asyncio.create_task(self._stream(send))
        watcher = asyncio.create_task(self._wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is shutting the request down
            self.call.cancel()
            worker.cancel()
            watcher.cancel()
            raise
        if worker in done:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            worker.result()
            return
        # The client went away first: stop the backend now, then the writer.
        self.client_gone = True
        self.call.cancel()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await worker

    @staticmethod
    async def _wait_disconnect(receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    async def _stream(self, send) -> None:
        first = asyncio.ensure_future(self.call.read())
        started = False
        try:
            done, _ = await asyncio.wait({first}, timeout=self.first_event_wait)
            if done and first.exception() is not None:
                exc = first.exception()
                if not isinstance(exc, grpc.RpcError):
                    raise exc
                status, body = self.error_response(self.to_error(exc))
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json")] + self.extra_headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + self.extra_headers})
            started = True
            try:
                message = await first
                if message is not grpc.aio.EOF and self.prelude is not None:
                    await self._send_payloads(send, self.prelude())
                while message is not grpc.aio.EOF:
                    await self._send_payloads(send, self.render(message))
                    message = await self.call.read()
                if self.finale is not None:
                    await self._send_payloads(send, self.finale())
            except grpc.RpcError as exc:
                await send({"type": "http.response.body", "body": event(self.error_payload(self.to_error(exc))),
                            "more_body": True})
            except Exception:  # a gateway bug: still end the stream with an error event, not a cut
                log.exception("stream failed after its first event")
                err = GatewayError("INTERNAL", "internal error in the gateway while streaming")
                await send({"type": "http.response.body", "body": event(self.error_payload(err)), "more_body": True})
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
        finally:
            if not first.done():
                first.cancel()
            self.call.cancel()  # no-op once the call has finished
            if not started and first.done() and not first.cancelled():
                first.exception()  # retrieved: no "exception never retrieved" warning

    @staticmethod
    async def _send_payloads(send, payloads: Iterable[Any]) -> None:
        chunk = b"".join(event(p) for p in payloads)
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
