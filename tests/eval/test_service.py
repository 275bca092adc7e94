"""EvalService over real in-process gRPC: results, errors, streaming progress, cancellation,
base vs tuned, adapters, and generation metrics through evalscope."""

from __future__ import annotations

import json
import shutil
import time

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from services.eval.server import register
from tests.eval.conftest import BILINGUAL, learned_facts, read_conversations, write_rows
from tests.support import InProcessServer
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc


@pytest.fixture
def stub(config) -> eval_pb2_grpc.EvalServiceStub:
    with InProcessServer(config, "eval", register) as srv:
        yield eval_pb2_grpc.EvalServiceStub(srv.channel())


@pytest.fixture
def trained_stub(eval_config) -> eval_pb2_grpc.EvalServiceStub:
    """A server whose allowed roots include the session's trained models."""
    with InProcessServer(eval_config, "eval", register) as srv:
        yield eval_pb2_grpc.EvalServiceStub(srv.channel())


def _fail(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return decode_rpc_error(err.value)


def test_evaluate_returns_metrics_counts_and_per_sample_file(stub, workspace, ws_model):
    rows = read_conversations(BILINGUAL, 12)
    write_rows(workspace / "data" / "chat.jsonl", rows + ["{broken"])
    resp = stub.Evaluate(eval_pb2.EvaluateRequest(
        model_path="models/tiny-chat", dataset_path="data/chat.jsonl",
        metrics=["loss", "perplexity", "accuracy"], batch_size=4, per_sample_path="out/samples.jsonl"), timeout=120)
    assert set(resp.metrics) == {"loss", "perplexity", "accuracy"}
    assert resp.metrics["perplexity"] == pytest.approx(2.718281828459045 ** resp.metrics["loss"], rel=1e-9)
    assert resp.total_samples == 12
    assert resp.skipped_samples == 1 and sum(resp.skip_reasons.values()) == 1
    assert resp.eval_time > 0
    assert resp.per_sample_path == "out/samples.jsonl"
    lines = [json.loads(x) for x in (workspace / "out" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 12
    assert sum(x["tokens"] for x in lines) == resp.tokens_scored
    # The loss is token-weighted over the whole dataset.
    assert resp.metrics["loss"] == pytest.approx(
        sum(x["loss"] * x["tokens"] for x in lines) / resp.tokens_scored, rel=1e-9)
    assert not list((workspace / "out").glob(".*.tmp"))


def test_default_metrics_and_base_model_fallback(stub, workspace):
    write_rows(workspace / "d.jsonl", read_conversations(BILINGUAL, 3))
    resp = stub.Evaluate(eval_pb2.EvaluateRequest(dataset_path="d.jsonl"), timeout=120)
    assert set(resp.metrics) == {"accuracy", "loss"}  # the original API's defaults
    assert resp.total_samples == 3


def test_stream_reports_progress_then_the_result(stub, workspace, ws_model):
    write_rows(workspace / "d.jsonl", read_conversations(BILINGUAL, 10))
    req = eval_pb2.EvaluateRequest(model_path="models/tiny-chat", dataset_path="d.jsonl",
                                   metrics=["loss"], batch_size=4)
    events = list(stub.EvaluateStream(req, timeout=120))
    assert events[0].phase == "loading"
    scoring = [e for e in events if e.phase == "scoring"]
    assert [e.samples_done for e in scoring] == [0, 4, 8, 10]
    assert all(e.samples_total == 10 for e in scoring)
    last = events[-1]
    assert last.phase == "done" and last.HasField("result")
    assert not any(e.HasField("result") for e in events[:-1])
    unary = stub.Evaluate(req, timeout=120)
    assert last.result.metrics["loss"] == pytest.approx(unary.metrics["loss"], abs=1e-9)
    assert last.result.total_samples == unary.total_samples == 10


@pytest.mark.slow
def test_cancelling_the_stream_stops_the_work_and_frees_the_slot(config, workspace, ws_model):
    cfg = config.with_overrides({"eval.max_concurrent": 1, "eval.max_queue": 0})
    rows = read_conversations(BILINGUAL) * 3
    write_rows(workspace / "big.jsonl", rows)
    write_rows(workspace / "small.jsonl", read_conversations(BILINGUAL, 2))
    with InProcessServer(cfg, "eval", register) as srv:
        stub = eval_pb2_grpc.EvalServiceStub(srv.channel())
        call = stub.EvaluateStream(eval_pb2.EvaluateRequest(
            model_path="models/tiny-chat", dataset_path="big.jsonl", metrics=["loss"], batch_size=1,
            per_sample_path="big-samples.jsonl"), timeout=600)
        for event in call:
            if event.phase == "scoring" and event.samples_done >= 2:
                assert event.samples_total == len(rows)
                break
        call.cancel()
        # While the cancelled run still holds the only slot, a new call is refused at once.
        small = eval_pb2.EvaluateRequest(model_path="models/tiny-chat", dataset_path="small.jsonl", metrics=["loss"])
        deadline = time.monotonic() + 300
        while True:
            try:
                resp = stub.Evaluate(small, timeout=120)
                break
            except grpc.RpcError as exc:
                assert decode_rpc_error(exc).code == "RESOURCE_EXHAUSTED"
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert resp.total_samples == 2
    # The cancelled run stopped between batches: it never got to write its per-sample file.
    assert not (workspace / "big-samples.jsonl").exists()
    assert not list(workspace.glob(".big-samples*"))


@pytest.fixture
def bad_paths(workspace, ws_model):
    write_rows(workspace / "d.jsonl", read_conversations(BILINGUAL, 2))
    write_rows(workspace / "junk.jsonl", ["{nope", "[]"])
    (workspace / "not-a-model").mkdir()
    (workspace / "not-a-model" / "readme.txt").write_text("hi")
    no_markers = workspace / "models" / "no-markers"
    shutil.copytree(ws_model, no_markers)
    template = (no_markers / "chat_template.jinja").read_text()
    for tag in ("{%- generation %}", "{%- endgeneration %}"):
        assert tag in template
        template = template.replace(tag, "")
    (no_markers / "chat_template.jinja").write_text(template)
    return workspace


@pytest.mark.parametrize("fields, code, field", [
    ({"metrics": ["loss", "bleu"]}, "INVALID_ARGUMENT", "metrics"),
    ({"batch_size": 0}, "INVALID_ARGUMENT", "batch_size"),
    ({"max_new_tokens": 0}, "INVALID_ARGUMENT", "max_new_tokens"),
    ({"max_samples": -1}, "INVALID_ARGUMENT", "max_samples"),
    ({"dataset_path": "missing.jsonl"}, "NOT_FOUND", "dataset_path"),
    ({"dataset_path": "/etc/hostname"}, "PERMISSION_DENIED", "dataset_path"),
    ({"dataset_path": "../outside.jsonl"}, "PERMISSION_DENIED", "dataset_path"),
    ({"dataset_path": "models"}, "INVALID_ARGUMENT", "dataset_path"),
    ({"dataset_path": "junk.jsonl"}, "INVALID_ARGUMENT", "dataset_path"),
    ({"model_path": "models/nope"}, "NOT_FOUND", "model_path"),
    ({"model_path": "not-a-model"}, "FAILED_PRECONDITION", "model_path"),
    ({"model_path": "/usr"}, "PERMISSION_DENIED", "model_path"),
    ({"model_path": "models/no-markers"}, "FAILED_PRECONDITION", "model_path"),
    ({"lora_adapter_path": "models/tiny-chat"}, "FAILED_PRECONDITION", "lora_adapter_path"),
    ({"lora_adapter_path": "nowhere"}, "NOT_FOUND", "lora_adapter_path"),
    ({"per_sample_path": "/tmp/x.jsonl"}, "PERMISSION_DENIED", "per_sample_path"),
    ({"per_sample_path": "models"}, "INVALID_ARGUMENT", "per_sample_path"),
])
def test_bad_requests_get_the_right_status(stub, bad_paths, fields, code, field):
    req = {"model_path": "models/tiny-chat", "dataset_path": "d.jsonl", "metrics": ["loss"]}
    req.update(fields)
    for method in (stub.Evaluate, lambda r, timeout: list(stub.EvaluateStream(r, timeout=timeout))):
        failure = _fail(method, eval_pb2.EvaluateRequest(**req), timeout=120)
        assert failure.code == code, failure.message
        assert failure.message.startswith(field) or field in dict(failure.field_violations), failure
        if code == "INVALID_ARGUMENT":
            assert field in dict(failure.field_violations)
    if field == "metrics":
        for name in ("loss", "perplexity", "accuracy", "token_accuracy", "exact_match", "rouge"):
            assert name in failure.message


@pytest.mark.slow
def test_tuned_model_scores_better_than_base_and_adapters_apply(trained_stub, workspace, eval_models):
    stub = trained_stub
    write_rows(workspace / "facts.jsonl", learned_facts())

    def loss(**kw):
        resp = stub.Evaluate(eval_pb2.EvaluateRequest(dataset_path="facts.jsonl", metrics=["loss", "accuracy"], **kw),
                             timeout=120)
        assert resp.total_samples == len(learned_facts())
        return resp.metrics["loss"], resp.metrics["accuracy"]

    base_loss, base_acc = loss(model_path=str(eval_models["base"]))
    tuned_loss, tuned_acc = loss(model_path=str(eval_models["tuned"]))
    assert tuned_loss < 0.5 * base_loss
    assert tuned_acc > base_acc
    # An adapter applied onto model_path, and an adapter folder given as model_path, are the same model.
    applied_loss, _ = loss(model_path=str(eval_models["base"]), lora_adapter_path=str(eval_models["adapter"]))
    folder_loss, _ = loss(model_path=str(eval_models["adapter"]))
    assert applied_loss == pytest.approx(folder_loss, abs=1e-6)
    assert applied_loss < base_loss - 0.5
    # An adapter on top of an adapter is not something we guess at.
    failure = _fail(stub.Evaluate, eval_pb2.EvaluateRequest(
        model_path=str(eval_models["adapter"]), lora_adapter_path=str(eval_models["adapter"]),
        dataset_path="facts.jsonl"), timeout=60)
    assert failure.code == "INVALID_ARGUMENT"
    assert "lora_adapter_path" in dict(failure.field_violations)


@pytest.mark.slow
def test_generation_metrics_through_evalscope(trained_stub, workspace, eval_models):
    stub = trained_stub
    from evalscope.metrics.utils.rouge import compute_rouge_score_one_sample_zh

    facts = learned_facts()
    write_rows(workspace / "facts.jsonl", facts)
    events = list(stub.EvaluateStream(eval_pb2.EvaluateRequest(
        model_path=str(eval_models["tuned"]), dataset_path="facts.jsonl", batch_size=8,
        metrics=["exact_match", "rouge", "loss"], max_new_tokens=24, per_sample_path="gen.jsonl"), timeout=600))
    generating = [e for e in events if e.phase == "generating"]
    assert generating[0].samples_done == 0 and generating[-1].samples_done == len(facts)
    resp = events[-1].result
    assert set(resp.metrics) == {"exact_match", "rouge-1", "rouge-2", "rouge-l", "loss"}
    assert resp.metrics["exact_match"] >= 0.6  # the tuned model learned these answers
    assert resp.metrics["rouge-l"] >= 0.6
    samples = [json.loads(x) for x in (workspace / "gen.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["reference"] for s in samples] == [c[-1]["content"] for c in facts]
    for s in samples:
        assert s["exact_match"] == (1.0 if s["generated"].strip(" 。.") == s["reference"].strip(" 。.") else 0.0)
        want = compute_rouge_score_one_sample_zh([s["generated"]], [s["reference"]])
        assert s["rouge-1"] == pytest.approx(want["Rouge-1-F"])
        assert s["rouge-l"] == pytest.approx(want["Rouge-L-F"])
    assert resp.metrics["exact_match"] == pytest.approx(sum(s["exact_match"] for s in samples) / len(samples))
    assert resp.metrics["rouge-l"] == pytest.approx(sum(s["rouge-l"] for s in samples) / len(samples), abs=1e-4)
    # evalscope's own report sits in the workspace, under the folder the response names.
    report = workspace / resp.report_path / "reports" / "wintrain" / "general_qa.json"
    assert report.is_file()
    assert (workspace / resp.report_path / "dataset" / "wintrain.jsonl").is_file()
    assert not list((workspace / "eval").glob(".*"))


def test_documented_defaults_fit_lower_deployment_limits(workspace, tiny_model_dir):
    """A deployment capping generation below the documented default (128) must not refuse a
    request that never named max_new_tokens; a value the client names is still checked."""
    from services.common.errors import InvalidArgument
    from services.common.proto_defaults import apply_request_defaults
    from services.eval.server import EvalServicer
    from tests.support import make_config

    cfg = make_config(workspace, tiny_model_dir, **{"inference.max_new_tokens_cap": 8, "eval.max_batch_size": 4})
    write_rows(workspace / "d.jsonl", read_conversations(BILINGUAL, 1))
    servicer = EvalServicer(cfg)

    def job_of(request):  # what the server runtime does where a request enters, then the servicer
        return servicer._job(apply_request_defaults(request, servicer.default_limits))

    job = job_of(eval_pb2.EvaluateRequest(dataset_path="d.jsonl", metrics=["loss"]))
    assert (job.max_new_tokens, job.batch_size) == (8, 4)  # documented defaults 128 and 8
    with pytest.raises(InvalidArgument) as err:
        job_of(eval_pb2.EvaluateRequest(dataset_path="d.jsonl", batch_size=5))
    assert "batch_size" in dict(err.value.field_violations)
    assert job_of(eval_pb2.EvaluateRequest(dataset_path="d.jsonl", max_new_tokens=5)).max_new_tokens == 5
    with pytest.raises(InvalidArgument) as err:
        job_of(eval_pb2.EvaluateRequest(dataset_path="d.jsonl", max_new_tokens=9))
    assert dict(err.value.field_violations)["max_new_tokens"] == "must be between 1 and 8, got 9"
