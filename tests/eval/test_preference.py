"""Preference metrics (issue 18, evaluation) over a real EvalService: preference_accuracy on
length-normalised log-likelihoods, reward_margin against the reference (a LoRA adapter's base
with the adapter disabled, or a full model's reference), `loss` scoring the chosen side, and the
requests that are refused."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from services.eval import metrics as token_metrics
from services.eval.server import register
from tests.eval.conftest import QA_FACTS, read_conversations, write_rows
from tests.support import InProcessServer
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc

BETA = 0.1


@pytest.fixture
def stub(eval_config):
    with InProcessServer(eval_config, "eval", register) as srv:
        yield eval_pb2_grpc.EvalServiceStub(srv.channel())


def fact_pairs() -> list[dict]:
    """Each QA fact's question: its own answer (chosen) against the next fact's answer in the
    same language (rejected). The tuned models learned facts 0, 1, 2, 6 and 7."""
    facts = [(c[0]["content"], c[1]["content"]) for c in read_conversations(QA_FACTS)]
    en = [f for f in facts if f[0].isascii()]
    zh = [f for f in facts if not f[0].isascii()]
    pairs = []
    for group in (en, zh):
        for i, (q, answer) in enumerate(group):
            pairs.append({"prompt": [{"role": "user", "content": q}],
                          "chosen": [{"role": "assistant", "content": answer}],
                          "rejected": [{"role": "assistant", "content": group[(i + 1) % len(group)][1]}]})
    return pairs


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


def evaluate(stub, **kw):
    return stub.Evaluate(eval_pb2.EvaluateRequest(batch_size=4, **kw), timeout=300)


def samples(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_preference_metrics_math():
    s = token_metrics.SampleScore
    chosen = [s(0, loss_sum=2.0, tokens=4, correct=0), s(1, loss_sum=9.0, tokens=3, correct=0)]
    rejected = [s(0, loss_sum=6.0, tokens=4, correct=0), s(1, loss_sum=8.0, tokens=8, correct=0)]
    ref_c = [s(0, 3.0, 4, 0), s(1, 9.0, 3, 0)]
    ref_r = [s(0, 5.0, 4, 0), s(1, 8.0, 8, 0)]
    pm, per = token_metrics.preference_metrics(chosen, rejected, ref_c, ref_r, beta=0.5)
    # Pair 0: mean logp -0.5 > -1.5. Pair 1: -3.0 < -1.0, the rejected side wins per token.
    assert pm.preference_accuracy == 0.5 and [p["preferred"] for p in per] == [True, False]
    # Margins: 0.5 * ((-2 + 3) - (-6 + 5)) = 1.0 and 0.5 * ((-9 + 9) - (-8 + 8)) = 0.
    assert [p["reward_margin"] for p in per] == [1.0, 0.0] and pm.reward_margin == 0.5
    no_ref, _ = token_metrics.preference_metrics(chosen, rejected)
    assert no_ref.reward_margin is None


def test_only_the_completion_is_scored(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first reply"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]
    full = token_metrics.encode_conversation(tok, conv, 0, 512)
    last = token_metrics.encode_conversation(tok, conv, 0, 512, last_only=True)
    only = token_metrics.encode_conversation(tok, conv[2:], 0, 512)
    assert full.input_ids == last.input_ids
    assert 0 < last.scored_tokens == only.scored_tokens < full.scored_tokens
    ones = [i for i, m in enumerate(last.assistant_mask) if m]
    assert ones == list(range(ones[0], ones[-1] + 1)) and ones[-1] >= len(last.input_ids) - 2
    # Cut before the completion: nothing left to score (an earlier turn is not scored instead).
    cut = token_metrics.encode_conversation(tok, conv, 0, ones[0], last_only=True)
    assert cut.truncated and cut.scored_tokens == 0


def test_adapter_prefers_the_facts_it_learned_and_its_margin_is_against_its_base(stub, workspace, eval_models):
    pairs = write_pairs(workspace / "pairs.jsonl", fact_pairs())
    adapter = evaluate(stub, model_path=str(eval_models["adapter"]), dataset_path="pairs.jsonl",
                       metrics=["preference_accuracy", "reward_margin", "loss"], beta=BETA,
                       per_sample_path="adapter.jsonl")
    base = evaluate(stub, model_path=str(eval_models["base"]), dataset_path="pairs.jsonl",
                    metrics=["preference_accuracy"], per_sample_path="base.jsonl")
    assert set(adapter.metrics) == {"preference_accuracy", "reward_margin", "loss"}
    assert adapter.total_samples == base.total_samples == 10
    a_rows, b_rows = samples(workspace / "adapter.jsonl"), samples(workspace / "base.jsonl")
    learned = [i for i, p in enumerate(fact_pairs()) if p["prompt"][0]["content"] in
               {c[0]["content"] for c in [read_conversations(QA_FACTS)[k] for k in (0, 1, 2, 6, 7)]}]
    assert all(a_rows[i]["preferred"] for i in learned)
    assert adapter.metrics["preference_accuracy"] > base.metrics["preference_accuracy"]
    # The margin, recomputed from the two models' own log-likelihoods: the reference really is
    # the base (the adapter disabled).
    margins = []
    for a, b in zip(a_rows, b_rows):
        delta_c = a["chosen_logp"] * a["chosen_tokens"] - b["chosen_logp"] * b["chosen_tokens"]
        delta_r = a["rejected_logp"] * a["rejected_tokens"] - b["rejected_logp"] * b["rejected_tokens"]
        margins.append(BETA * (delta_c - delta_r))
        assert a["reward_margin"] == pytest.approx(margins[-1], abs=1e-4)
    assert adapter.metrics["reward_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert adapter.metrics["reward_margin"] > 0.5  # it learned the chosen facts, not the others
    # `loss` on a preference dataset is the chosen side's: the same as the SFT loss of
    # prompt + chosen (single-turn prompts), token-weighted.
    write_rows(workspace / "chosen.jsonl", [p["prompt"] + p["chosen"] for p in fact_pairs()])
    sft = evaluate(stub, model_path=str(eval_models["adapter"]), dataset_path="chosen.jsonl", metrics=["loss"])
    assert adapter.metrics["loss"] == pytest.approx(sft.metrics["loss"], rel=1e-6)
    assert adapter.tokens_scored == sft.tokens_scored


def test_full_model_margin_uses_the_given_or_configured_reference(stub, workspace, eval_models):
    write_pairs(workspace / "pairs.jsonl", fact_pairs())
    req = dict(dataset_path="pairs.jsonl", metrics=["preference_accuracy", "reward_margin"])
    tuned = evaluate(stub, model_path=str(eval_models["tuned"]), **req)
    given = evaluate(stub, model_path=str(eval_models["tuned"]), reference_model_path=str(eval_models["base"]), **req)
    assert tuned.metrics["reward_margin"] == pytest.approx(given.metrics["reward_margin"], abs=1e-5)
    assert tuned.metrics["reward_margin"] > 0.5 and tuned.metrics["preference_accuracy"] >= 0.5
    # Against itself, the margin is zero; a larger beta scales it.
    same = evaluate(stub, model_path=str(eval_models["tuned"]), reference_model_path=str(eval_models["tuned"]), **req)
    assert abs(same.metrics["reward_margin"]) < 1e-6
    doubled = evaluate(stub, model_path=str(eval_models["tuned"]), beta=0.2, **req)
    assert doubled.metrics["reward_margin"] == pytest.approx(2 * tuned.metrics["reward_margin"], rel=1e-5)


def test_stream_has_a_reference_phase(stub, workspace, eval_models):
    write_pairs(workspace / "pairs.jsonl", fact_pairs()[:6])
    events = list(stub.EvaluateStream(eval_pb2.EvaluateRequest(
        model_path=str(eval_models["adapter"]), dataset_path="pairs.jsonl", batch_size=4,
        metrics=["reward_margin"]), timeout=300))
    phases = [e.phase for e in events]
    assert phases.index("scoring") < phases.index("reference") < phases.index("done")
    assert [e.samples_done for e in events if e.phase == "reference"] == [0, 4, 8, 12]
    assert math.isfinite(events[-1].result.metrics["reward_margin"])


def _fail(stub, **kw):
    with pytest.raises(grpc.RpcError) as err:
        evaluate(stub, **kw)
    return decode_rpc_error(err.value)


def test_refused_requests_name_their_field(stub, workspace, eval_models):
    write_pairs(workspace / "pairs.jsonl", fact_pairs()[:2])
    write_rows(workspace / "sft.jsonl", read_conversations(QA_FACTS, 2))
    fail = _fail(stub, model_path=str(eval_models["base"]), dataset_path="sft.jsonl",
                 metrics=["loss", "preference_accuracy"])
    assert fail.code == "INVALID_ARGUMENT" and "metrics" in fail.message and "preference dataset" in fail.message
    for beta in (0.0, -1.0, float("nan")):
        fail = _fail(stub, dataset_path="pairs.jsonl", metrics=["reward_margin"], beta=beta)
        assert fail.code == "INVALID_ARGUMENT" and "beta" in fail.message
    fail = _fail(stub, model_path=str(eval_models["adapter"]), dataset_path="pairs.jsonl",
                 metrics=["reward_margin"], reference_model_path=str(eval_models["base"]))
    assert fail.code == "INVALID_ARGUMENT" and "reference_model_path" in fail.message
    fail = _fail(stub, dataset_path="pairs.jsonl", metrics=["preference_accuracy"],
                 reference_model_path=str(eval_models["base"]))
    assert fail.code == "INVALID_ARGUMENT" and "reference_model_path" in fail.message
    fail = _fail(stub, dataset_path="pairs.jsonl", metrics=["reward_margin"], reference_model_path="nowhere")
    assert fail.code == "NOT_FOUND" and "reference_model_path" in fail.message
