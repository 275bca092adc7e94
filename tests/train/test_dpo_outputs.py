"""DPO outputs through the rest of the lifecycle, as SFT outputs go: a LoRA DPO adapter folder and
a full DPO model folder, each trained by a real TrainService worker, are served by the
InferenceService (greedy chat), scored by the EvalService (loss and preference_accuracy on
preference pairs), and exported by the ExportService to ONNX, where a real ONNX Runtime session
answers the same greedy tokens as the chat. Real gRPC servers on free ports, the tiny model."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from services.eval.server import register as register_eval
from services.export.server import register as register_export
from services.inference.server import register as register_inference
from services.train.server import register as register_train
from tests.support import InProcessServer, make_config
from tests.train.conftest import start, train_overrides, wait_terminal
from tests.train.test_dpo import LORA, PAIRS, SMALL
from tools.tiny_model import DATASETS_DIR
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc
from wintrain.export.v1 import export_pb2, export_pb2_grpc
from wintrain.inference.v1 import inference_pb2, inference_pb2_grpc
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = pytest.mark.slow

QUESTIONS = ("Tell me a short story about a cat.", "今天天气怎么样？")
NEW_TOKENS = 12
KINDS = {"lora": dict(output="out/dpo-lora", lora=LORA, max_steps=6, seed=3),
         "full": dict(output="out/dpo-full", max_steps=2, **{"learning_rate": 1e-4})}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("dpo-outputs") / "ws"
    (ws / "datasets").mkdir(parents=True)
    shutil.copy(DATASETS_DIR / "preference_pairs.jsonl", ws / "datasets" / "preference_pairs.jsonl")
    lines = (ws / "datasets" / "preference_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    (ws / "datasets" / "pairs_eval.jsonl").write_text("\n".join(lines[:16]) + "\n", encoding="utf-8")
    return ws


@pytest.fixture(scope="module")
def cfg(ws, tiny_model_dir):
    return make_config(ws, tiny_model_dir, **train_overrides())


@pytest.fixture(scope="module")
def outputs(cfg, ws):
    """One short run per kind (both queued at once), reused by every test below."""
    with InProcessServer(cfg, "train", register_train) as train:
        stub = train_pb2_grpc.TrainServiceStub(train.channel())
        ids = {}
        for kind, run in KINDS.items():
            run = {**SMALL, **run}
            ids[kind] = (start(stub, strategy=train_pb2.STRATEGY_DPO, dataset=PAIRS, save_steps=0, **run).task_id,
                         run["output"])
        for kind, (task_id, _) in ids.items():
            task = wait_terminal(stub, task_id, timeout=600)
            assert task.status == train_pb2.TASK_STATUS_COMPLETED, (kind, task.error_message)
    assert (ws / KINDS["lora"]["output"] / "adapter_config.json").is_file()
    assert (ws / KINDS["full"]["output"] / "config.json").is_file()
    assert not (ws / KINDS["full"]["output"] / "adapter_config.json").exists()
    return {kind: output for kind, (_, output) in ids.items()}


@pytest.fixture(scope="module")
def chat(cfg, outputs):
    with InProcessServer(cfg, "inference", register_inference) as srv:
        yield inference_pb2_grpc.InferenceServiceStub(srv.channel())


def greedy_chat(chat, model_path: str, question: str) -> str:
    req = inference_pb2.ChatRequest(messages=[inference_pb2.ChatMessage(role="user", content=question)],
                                    max_tokens=NEW_TOKENS, temperature=0)
    if model_path:
        req.model_path = model_path
    return chat.Chat(req, timeout=180).content


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_chat_serves_the_dpo_output(chat, outputs, kind):
    tuned = [greedy_chat(chat, outputs[kind], q) for q in QUESTIONS]
    assert all(tuned), tuned
    base = [greedy_chat(chat, "", q) for q in QUESTIONS]
    # the output is really what answers (training moved it off the base)
    assert tuned != base or kind == "full", (tuned, base)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_eval_scores_the_dpo_output_on_preference_pairs(cfg, outputs, kind):
    with InProcessServer(cfg, "eval", register_eval) as srv:
        ev = eval_pb2_grpc.EvalServiceStub(srv.channel())
        got = {}
        for name, model in (("base", ""), ("tuned", outputs[kind])):
            req = eval_pb2.EvaluateRequest(dataset_path="datasets/pairs_eval.jsonl",
                                           metrics=["loss", "preference_accuracy"], batch_size=8)
            if model:
                req.model_path = model
            got[name] = ev.Evaluate(req, timeout=600).metrics
    for m in got.values():
        assert math.isfinite(m["loss"]) and m["loss"] > 0
        assert 0.0 <= m["preference_accuracy"] <= 1.0
    assert got["tuned"]["loss"] != got["base"]["loss"], got


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_export_of_the_dpo_output_answers_as_the_chat_does(cfg, ws, outputs, chat, kind):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    folder = f"exports/dpo-{kind}"
    with InProcessServer(cfg, "export", register_export) as srv:
        r = export_pb2_grpc.ExportServiceStub(srv.channel()).ExportOnnx(
            export_pb2.ExportOnnxRequest(model_path=outputs[kind], output_path=folder), timeout=600)
    assert r.success and r.parity.tokens_match, r
    ort = ORTModelForCausalLM.from_pretrained(str(ws / folder), file_name="model.onnx", use_io_binding=False)
    tok = AutoTokenizer.from_pretrained(str(ws / folder))
    for question in QUESTIONS:
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      tokenize=True)
        ids = torch.tensor([list(ids)], dtype=torch.long)
        out = ort.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                           pad_token_id=tok.pad_token_id or 0)
        onnx_answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert onnx_answer.strip() == greedy_chat(chat, outputs[kind], question).strip(), question
