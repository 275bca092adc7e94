"""Helpers shared by the export tests."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from wintrain.export.v1 import export_pb2

PROMPTS = (
    [{"role": "user", "content": "今天天气怎么样？"}],
    [{"role": "user", "content": "Tell me a short story about a cat."}],
)


def call_export(stub, timeout: float = 300, **fields) -> export_pb2.ExportOnnxResponse:
    return stub.ExportOnnx(export_pb2.ExportOnnxRequest(**fields), timeout=timeout)


def expect_error(stub, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call_export(stub, **fields)
    return info.value


def prompt_ids(tokenizer, conversation) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    return torch.tensor([list(ids)], dtype=torch.long)


def torch_logits(model, ids: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()


def ort_model(folder, file_name: str = "model.onnx"):
    from optimum.onnxruntime import ORTModelForCausalLM

    return ORTModelForCausalLM.from_pretrained(str(folder), file_name=file_name, use_io_binding=False)


def greedy(model, ids: torch.Tensor, n: int = 8) -> list[int]:
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()
