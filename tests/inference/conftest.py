"""Fixtures for the inference tests: model variants built from the tiny model, and helpers
to run a real in-process InferenceService."""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
from pathlib import Path

import pytest

from services.inference.registry import ModelRegistry
from services.inference.server import InferenceServicer, register
from tests.support import InProcessServer, make_config
from wintrain.inference.v1 import inference_pb2 as pb
from wintrain.inference.v1 import inference_pb2_grpc as pb_grpc

# Rare characters the tiny tokenizer splits into single-byte tokens, so a character really
# does arrive in pieces during generation.
CHINESE_ANSWER = "饕餮龘鬱，世界很大。"
CHINESE_PROMPT = "讲一个故事"


@pytest.fixture(scope="session")
def noisy_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with seeded noise on its weights: still random, but its greedy answers
    differ from prompt to prompt (the plain random init answers most prompts alike)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("models") / "noisy"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=gen) * 0.08)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chinese_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model taught (a few dozen real optimizer steps) to answer CHINESE_ANSWER."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": CHINESE_PROMPT}], add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([prompt + tok.encode(CHINESE_ANSWER) + [tok.eos_token_id]])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1.5e-3)
    answer = ""
    for _round in range(4):
        model.train()
        for _ in range(20):
            model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, use_model_defaults=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, len(prompt):], skip_special_tokens=True)
        if answer == CHINESE_ANSWER:
            break
    assert answer == CHINESE_ANSWER, f"the tiny model did not learn the answer: {answer!r}"
    dest = tmp_path_factory.mktemp("models") / "chinese"
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@contextlib.contextmanager
def inference_server(config, *, loader=None):
    """A real InferenceService on a free port; yields (server, stub, servicer)."""
    registry = ModelRegistry(config, loader=loader) if loader is not None else ModelRegistry(config)
    servicer = InferenceServicer(config, registry=registry)
    with InProcessServer(config, "inference", functools.partial(register, servicer=servicer)) as server:
        yield server, pb_grpc.InferenceServiceStub(server.channel()), servicer


def concurrently(fns, join_seconds: float) -> list:
    """Run the callables at once (threads, released together, each joined for up to `join_seconds`);
    their results in order. Any exception fails the test."""
    out: list = [None] * len(fns)
    errors: list = []
    gate = threading.Barrier(len(fns))

    def run(i):
        gate.wait()
        try:
            out[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_seconds)
    assert not errors, errors
    return out


def chat(content: str, **kwargs) -> pb.ChatRequest:
    return pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=content)], **kwargs)


@pytest.fixture
def noisy_config(workspace, noisy_model_dir):
    return make_config(workspace, noisy_model_dir)
