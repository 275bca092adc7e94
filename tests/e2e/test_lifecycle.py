"""Across services: an adapter trained by the training service is served by inference with
the trained answers, scores a lower loss than the base in eval, and exports to ONNX with parity.
Real gRPC servers on free ports, a real TRL/PEFT worker process, real ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tools.tiny_model import DATASETS_DIR
from services.eval.server import register as register_eval
from services.export.server import register as register_export
from services.inference.server import register as register_inference
from services.train.server import register as register_train
from tests.support import InProcessServer, make_config
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc
from wintrain.export.v1 import export_pb2, export_pb2_grpc
from wintrain.inference.v1 import inference_pb2, inference_pb2_grpc
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LORA_CONFIG = dict(max_steps=40, per_device_train_batch_size=10, gradient_accumulation_steps=1,
                   learning_rate=5e-3, warmup_steps=3, lr_scheduler_type="constant_with_warmup",
                   logging_steps=4, save_steps=0, max_length=128, weight_decay=0.0)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_trained_adapter_through_inference_eval_and_export(workspace, tiny_model_dir):
    cfg = make_config(workspace, tiny_model_dir, **{"train.worker_threads": 1, "train.watch_poll_seconds": 0.1})
    (workspace / "datasets").mkdir()
    shutil.copy(DATASETS_DIR / "qa_facts.jsonl", workspace / "datasets" / "qa_facts.jsonl")
    pairs = []
    for line in (workspace / "datasets" / "qa_facts.jsonl").read_text(encoding="utf-8").splitlines():
        conv = json.loads(line)["conversations"]
        pairs.append((conv[-2]["content"], conv[-1]["content"]))

    with InProcessServer(cfg, "train", register_train) as train, \
            InProcessServer(cfg, "inference", register_inference) as inference, \
            InProcessServer(cfg, "eval", register_eval) as evaluation, \
            InProcessServer(cfg, "export", register_export) as export:
        trainer = train_pb2_grpc.TrainServiceStub(train.channel())
        request = train_pb2.StartTrainingRequest(strategy=train_pb2.STRATEGY_LORA, dataset_path="datasets/qa_facts.jsonl",
                                                 output_dir="models/qa-lora", config=train_pb2.TrainingConfig(**LORA_CONFIG))
        request.config.lora_config.CopyFrom(train_pb2.LoraConfig(**LORA))
        task_id = trainer.StartTraining(request, timeout=60).task_id
        events = list(trainer.WatchTraining(train_pb2.WatchTrainingRequest(task_id=task_id), timeout=600))
        assert events[-1].status == train_pb2.TASK_STATUS_COMPLETED, events[-1]

        # Inference: the adapter is served by its path, no restart; it answers as trained.
        chat = inference_pb2_grpc.InferenceServiceStub(inference.channel())

        def answer(question: str, model_path: str | None) -> str:
            req = inference_pb2.ChatRequest(messages=[inference_pb2.ChatMessage(role="user", content=question)],
                                            max_tokens=48, temperature=0)
            if model_path:
                req.model_path = model_path
            return chat.Chat(req, timeout=120).content

        tuned = [answer(q, "models/qa-lora") for q, _ in pairs]
        base = [answer(q, None) for q, _ in pairs]
        right = sum(got == want for got, (_, want) in zip(tuned, pairs))
        assert right >= 5, list(zip(tuned, pairs))
        assert sum(got == want for got, (_, want) in zip(base, pairs)) == 0
        streamed = "".join(e.token for e in chat.ChatStream(inference_pb2.ChatRequest(
            model_path="models/qa-lora", messages=[inference_pb2.ChatMessage(role="user", content=pairs[0][0])],
            max_tokens=48, temperature=0), timeout=120))
        assert streamed == tuned[0]

        # Eval: the tuned model's masked loss on its training set is far below the base model's.
        scorer = eval_pb2_grpc.EvalServiceStub(evaluation.channel())
        scores = {}
        for name, model_path in (("base", ""), ("tuned", "models/qa-lora")):
            scores[name] = scorer.Evaluate(eval_pb2.EvaluateRequest(
                model_path=model_path, dataset_path="datasets/qa_facts.jsonl", metrics=["loss", "accuracy"]),
                timeout=300).metrics
        assert scores["tuned"]["loss"] < 0.5 * scores["base"]["loss"], scores
        assert scores["tuned"]["accuracy"] > scores["base"]["accuracy"]

        # Export: the adapter merged into ONNX with KV cache, proven against PyTorch.
        exported = export_pb2_grpc.ExportServiceStub(export.channel()).ExportOnnx(export_pb2.ExportOnnxRequest(
            model_path="models/qa-lora", output_path="exports/qa.onnx"), timeout=600)
        assert exported.success and exported.parity.tokens_match
        assert exported.parity.max_abs_diff <= 1e-4
        assert (workspace / "exports" / "qa.onnx").is_file() and exported.file_size > 0
