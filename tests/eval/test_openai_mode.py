"""Generation metrics through evalscope's OpenAI-compatible client (`eval.openai_base_url`).

The endpoint here is a stub that answers from a table (a stand-in for Win-Train's own
`/v1/chat/completions`), so the expected exact match and ROUGE are known exactly."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from services.eval.server import register
from tests.eval.conftest import learned_facts, write_rows
from tests.support import InProcessServer, free_port
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc


@pytest.fixture
def chat_endpoint():
    """An OpenAI-style chat endpoint: right answers for the first three facts, a wrong one
    for the rest. Yields (base_url, received request bodies)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    facts = learned_facts()
    answers = {c[-2]["content"]: c[-1]["content"] for c in facts[:3]}
    seen: list[dict] = []

    async def completions(request):
        body = await request.json()
        seen.append(body)
        answer = answers.get(body["messages"][-1]["content"], "I do not know.")
        return JSONResponse({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        })

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "stub endpoint did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        server.should_exit = True
        thread.join(10)


def test_generation_metrics_against_an_openai_endpoint(config, workspace, chat_endpoint):
    base_url, seen = chat_endpoint
    facts = learned_facts()
    write_rows(workspace / "facts.jsonl", facts)
    cfg = config.with_overrides({"eval.openai_base_url": base_url})
    with InProcessServer(cfg, "eval", register) as srv:
        stub = eval_pb2_grpc.EvalServiceStub(srv.channel())
        resp = stub.Evaluate(eval_pb2.EvaluateRequest(
            model_path="", dataset_path="facts.jsonl", metrics=["exact_match", "rouge"], max_new_tokens=32),
            timeout=300)
    assert resp.metrics["exact_match"] == pytest.approx(3 / 5)
    # Three perfect answers and two with no word in common: ROUGE F1 means are 3/5 as well.
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert resp.metrics[key] == pytest.approx(3 / 5, abs=1e-6)
    assert resp.total_samples == 5
    assert len(seen) == 5
    assert {body["model"] for body in seen} == {str(cfg.base_model_path)}
    assert all(body["max_tokens"] == 32 and body["temperature"] == 0.0 for body in seen)
    # The prompt is the conversation up to the question, rendered by the endpoint, not evalscope.
    assert sorted(body["messages"][-1]["content"] for body in seen) == sorted(c[-2]["content"] for c in facts)
    assert (workspace / resp.report_path / "reports").is_dir()


@pytest.mark.slow
def test_an_unreachable_endpoint_is_unavailable(config, workspace):
    write_rows(workspace / "facts.jsonl", learned_facts()[:2])
    cfg = config.with_overrides({"eval.openai_base_url": f"http://127.0.0.1:{free_port()}/v1"})
    with InProcessServer(cfg, "eval", register) as srv:
        stub = eval_pb2_grpc.EvalServiceStub(srv.channel())
        with pytest.raises(grpc.RpcError) as err:
            stub.Evaluate(eval_pb2.EvaluateRequest(dataset_path="facts.jsonl", metrics=["exact_match"]), timeout=300)
    failure = decode_rpc_error(err.value)
    assert failure.code == "UNAVAILABLE", failure.message
    assert "eval.openai_base_url" in failure.message
    # Nothing half-written is left in the reports folder.
    reports = workspace / "eval"
    assert not reports.exists() or not any(reports.iterdir())
