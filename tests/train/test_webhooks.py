"""Webhooks when a task ends (issue 19): a real local HTTP receiver that answers 500 and then
200, Standard Webhooks signatures checked as a receiver would, retries with backoff, attempts
visible as task events, and a dead endpoint that never blocks or fails the task."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.train.server import register
from services.train.webhooks import secret_key, verify
from tests.support import InProcessServer, free_port, make_config
from tests.train.conftest import start, train_overrides, wait_terminal, watch
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = pytest.mark.slow
SECRET = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM="


class Receiver:
    """Answers each request with the next status of `statuses` (then 200), keeping what came."""

    def __init__(self, statuses):
        self.statuses, self.received = list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_signed_webhooks_retried_and_recorded(workspace, tiny_model_dir, datasets_dir):
    flaky = Receiver([500])
    native = Receiver([])
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    config = make_config(workspace, tiny_model_dir, **train_overrides(**{
        "train.webhooks": [
            {"url": flaky.url, "secret": SECRET, "events": ["fine_tuning.job.succeeded"]},
            {"url": native.url, "secret": "plain-secret", "events": ["train.task.completed"]},
            {"url": dead, "secret": "x"},
        ],
        "train.webhook_retry_seconds": 0.3, "train.webhook_max_attempts": 3}))
    try:
        with InProcessServer(config, "train", register) as server:
            stub = train_pb2_grpc.TrainServiceStub(server.channel())
            task = start(stub, output="out/hooked", max_steps=2, save_steps=0, logging_steps=1, max_length=64,
                         per_device_train_batch_size=2, gradient_accumulation_steps=1)
            done = wait_terminal(stub, task.task_id)
            assert done.status == train_pb2.TASK_STATUS_COMPLETED, done.error_message
            deadline = time.monotonic() + 60
            while (len(flaky.received) < 2 or not native.received) and time.monotonic() < deadline:
                time.sleep(0.1)
            # The flaky endpoint: 500, then the same message again after the backoff, 200.
            assert len(flaky.received) == 2, flaky.received
            (h1, b1, t1), (h2, b2, t2) = flaky.received
            assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2 and t2 - t1 >= 0.25
            for headers, body, _ in flaky.received:
                assert headers["webhook-signature"].startswith("v1,")
                assert verify(secret_key(SECRET), headers, body)
                assert not verify(b"another key", headers, body)
            event = json.loads(b2)
            assert event["type"] == "fine_tuning.job.succeeded" and event["object"] == "event"
            assert event["data"] == {"id": f"ftjob-{task.task_id}", "object": "fine_tuning.job", "status": "succeeded"}
            # The native event carries the task; a plain string secret is its UTF-8 bytes.
            headers, body, _ = native.received[0]
            assert verify(b"plain-secret", headers, body)
            payload = json.loads(body)
            assert payload["type"] == "train.task.completed" and payload["data"]["task_id"] == task.task_id
            assert payload["data"]["status"] == "completed"
            # Every try is a task event; the dead endpoint is given up after 3 tries, the task untouched.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                notes = [e.message for e in watch(stub, task.task_id, replay=True)
                         if e.kind == train_pb2.EVENT_KIND_WEBHOOK]
                if sum("giving up" in n for n in notes) == 2 and len(notes) >= 9:
                    break
                time.sleep(0.3)
            assert any(f"{flaky.url}: attempt 1/3 HTTP 500, failed, will retry" in n for n in notes), notes
            assert any(f"{flaky.url}: attempt 2/3 HTTP 200, delivered" in n for n in notes), notes
            assert sum(dead in n for n in notes) == 6 and any("3/3" in n and "giving up" in n for n in notes), notes
            final = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=task.task_id), timeout=10)
            assert final.status == train_pb2.TASK_STATUS_COMPLETED and final.completed_at == done.completed_at
    finally:
        flaky.close()
        native.close()


def test_bad_webhook_config_stops_start_up_naming_the_key(workspace, tiny_model_dir):
    from services.common.config import ConfigError
    from services.train.webhooks import load_subscribers

    for hooks, key in (([{"url": "ftp://x", "secret": "s"}], "train.webhooks[0].url"),
                       ([{"url": "http://x", "secret": ""}], "train.webhooks[0].secret"),
                       ([{"url": "http://x", "secret": "s", "events": ["job.done"]}], "train.webhooks[0].events")):
        config = make_config(workspace, tiny_model_dir, **{"train.webhooks": hooks})
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_subscribers(config)
