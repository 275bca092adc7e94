"""Many LoRA adapters on one base (issue 17 item 3), through a real in-process InferenceService
with real LoRA adapters trained on the noisy tiny model: the base and its adapters share one
copy of the base weights and one batch (PEFT mixed-adapter batches), each sequence of a mixed
batch gives exactly what it gives alone (greedy), the LRU counts the base once, ListModels shows
adapters under their base, unloading frees an adapter's weights, and an adapter loads while
other requests are generating."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from services.inference import scheduler
from tests.inference.conftest import chat, concurrently, inference_server
from tests.support import make_config, wait_until
from wintrain.inference.v1 import inference_pb2 as pb

PROMPTS = ["hi", "tell me a story about a cat", "what is 2+2?"]
GREEDY = dict(max_tokens=16, temperature=0)


def _train_adapter(base_dir, out_dir, answer: str, *, seed: int):
    """A LoRA adapter taught (real optimizer steps) to answer `answer`, saved like training does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread trains this fastest
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM"))
    rows = []
    for p in PROMPTS:
        prompt = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        target = tok.encode(answer) + [tok.eos_token_id]
        rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)  # one right-padded batch of the prompts
    ids = torch.tensor([r + [tok.eos_token_id] * (width - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(30):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg))
    return out_dir


@pytest.fixture(scope="module")
def adapters(noisy_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multilora")
    return root, {
        "a": _train_adapter(noisy_model_dir, root / "apples", "apples and pears", seed=1),
        "b": _train_adapter(noisy_model_dir, root / "bananas", "bananas, kiwis", seed=2),
    }


def _config(tmp_path_factory, noisy_model_dir, root, **overrides):
    return make_config(tmp_path_factory.mktemp("ws"), noisy_model_dir,
                       **{"storage.allowed_roots": [str(root)], **overrides})


def _concurrently(fns):
    return concurrently(fns, join_seconds=180)


def _listed(stub) -> dict[str, pb.ModelInfo]:
    return {m.path: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


@pytest.mark.slow
def test_a_mixed_batch_of_base_and_two_adapters_gives_each_what_it_gives_alone(
        adapters, noisy_model_dir, tmp_path_factory):
    root, paths = adapters
    cfg = _config(tmp_path_factory, noisy_model_dir, root)
    with inference_server(cfg) as (_server, stub, servicer):
        models = [None, str(paths["a"]), str(paths["b"])]  # None: the default model, the base
        for m in models:
            stub.LoadModel(pb.LoadModelRequest(model_path=m or ""), timeout=120)

        def ask(prompt, model):
            kwargs = {"model_path": model} if model else {}
            return stub.Chat(chat(prompt, **GREEDY, **kwargs), timeout=120).content

        alone = {(p, m): ask(p, m) for p in PROMPTS for m in models}
        # The adapters really change the answers (else this test could not fail).
        for p in PROMPTS:
            assert len({alone[(p, m)] for m in models}) == 3, [alone[(p, m)] for m in models]
        assert alone[(PROMPTS[0], models[1])].startswith("apples")
        assert alone[(PROMPTS[0], models[2])].startswith("bananas")

        # One shared module: the base and both adapters land in one scheduler, one batch.
        entries = servicer.registry.list()
        assert len({id(e.model) for e in entries}) == 1
        scheduler.STATS["peak_rows"] = 0
        keys = list(alone)
        together = _concurrently([lambda k=k: ask(*k) for k in keys])
        assert dict(zip(keys, together)) == alone
        assert scheduler.STATS["peak_rows"] >= 3, "base and adapter rows did not share a batch"

        # Streams of different adapters in one batch too.
        streamed = _concurrently([
            lambda k=k: "".join(c.token for c in stub.ChatStream(
                chat(k[0], **GREEDY, **({"model_path": k[1]} if k[1] else {})), timeout=120))
            for k in keys])
        assert dict(zip(keys, streamed)) == alone


@pytest.mark.slow
def test_adapters_share_the_base_are_listed_under_it_and_unload_with_it(
        adapters, noisy_model_dir, tmp_path_factory):
    root, paths = adapters
    cfg = _config(tmp_path_factory, noisy_model_dir, root)
    with inference_server(cfg) as (_server, stub, servicer):
        a = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["a"])), timeout=120)
        b = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["b"])), timeout=120)
        base_path = str(noisy_model_dir.resolve())
        assert a.kind == b.kind == "adapter" and a.base_model_path == b.base_model_path == base_path
        listed = _listed(stub)
        # Loading an adapter loaded its base once; the base lists its adapters.
        assert set(listed) == {base_path, a.path, b.path}
        base = listed[base_path]
        assert base.kind == "full" and base.is_default and list(base.adapters) == sorted([a.path, b.path])
        assert not listed[a.path].adapters
        # Memory: the base once, each adapter only its LoRA weights (r=8 on 4 projections).
        assert 0 < a.memory_bytes == b.memory_bytes < base.memory_bytes / 10
        assert 0 < a.parameters == b.parameters < base.parameters / 10
        assert a.memory_bytes == 4 * a.parameters  # float32 LoRA weights
        shared = {id(e.model) for e in servicer.registry.list()}
        assert len(shared) == 1
        total = sum(e.memory_bytes for e in servicer.registry.list())
        assert total == base.memory_bytes + a.memory_bytes + b.memory_bytes
        answer_b = stub.Chat(chat("hi", model_path=str(paths["b"]), **GREEDY), timeout=60).content

        # Unloading an adapter frees its own weights only; the other one still answers the same.
        peft = servicer.registry.list()[0].model
        names = set(peft.peft_config)
        gone = stub.UnloadModel(pb.UnloadModelRequest(model_path=a.path), timeout=30)
        assert gone.model_path == a.path and gone.freed_bytes == a.memory_bytes
        assert list(_listed(stub)[base_path].adapters) == [b.path]
        assert wait_until(lambda: len(peft.peft_config) == len(names) - 1, 10), "adapter a's weights were not deleted"
        assert stub.Chat(chat("hi", model_path=str(paths["b"]), **GREEDY), timeout=60).content == answer_b
        # A request for the unloaded adapter loads it again.
        again = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["a"])), timeout=120)
        assert again.memory_bytes == a.memory_bytes
        assert list(_listed(stub)[base_path].adapters) == sorted([a.path, b.path])

        # Unloading the base takes its adapters with it.
        gone = stub.UnloadModel(pb.UnloadModelRequest(model_path=base_path), timeout=30)
        assert gone.freed_bytes == base.memory_bytes + 2 * a.memory_bytes
        assert not _listed(stub)
        with pytest.raises(grpc.RpcError) as err:
            stub.UnloadModel(pb.UnloadModelRequest(model_path=b.path), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_the_lru_by_bytes_counts_the_base_once(adapters, noisy_model_dir, tmp_path_factory):
    root, paths = adapters
    cfg = _config(tmp_path_factory, noisy_model_dir, root)
    with inference_server(cfg) as (_server, stub, servicer):
        a = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["a"])), timeout=120)
        base = _listed(stub)[a.base_model_path]
        # Room for the base and one and a half adapters: 8 merged copies would never fit.
        servicer.registry.max_bytes = base.memory_bytes + int(1.5 * a.memory_bytes)
        b = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["b"])), timeout=120)
        listed = _listed(stub)
        assert set(listed) == {a.base_model_path, b.path}, "a (least recently used) should be evicted, not the base"
        assert list(listed[a.base_model_path].adapters) == [b.path]
        # Room for the base and both adapters: both stay.
        servicer.registry.max_bytes = base.memory_bytes + 2 * a.memory_bytes
        stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["a"])), timeout=120)
        assert set(_listed(stub)) == {a.base_model_path, a.path, b.path}


@pytest.mark.slow
def test_an_adapter_loads_while_other_requests_generate(adapters, noisy_model_dir, tmp_path_factory):
    root, paths = adapters
    cfg = _config(tmp_path_factory, noisy_model_dir, root)
    with inference_server(cfg) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=120)
        long = dict(max_tokens=160, min_tokens=160, temperature=0)
        alone = stub.Chat(chat("tell me a story about a cat", **long), timeout=120).content
        received: list[str] = []
        finished = threading.Event()

        def stream():
            for c in stub.ChatStream(chat("tell me a story about a cat", **long), timeout=120):
                received.append(c.token)
            finished.set()

        t = threading.Thread(target=stream)
        t.start()
        assert wait_until(lambda: len(received) >= 5, 60)
        # The first adapter is injected into the base module while its rows are decoding, the
        # second added to the PeftModel while base and adapter rows decode.
        loaded = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["a"])), timeout=120)
        got_a = stub.Chat(chat("hi", model_path=str(paths["a"]), **GREEDY), timeout=60).content
        loaded_b = stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["b"])), timeout=120)
        during = len(received)
        t.join(120)
        assert finished.is_set()
        assert loaded.kind == loaded_b.kind == "adapter"
        assert during < 160, "the stream ended before the adapters were loaded; the test proves nothing"
        assert "".join(received) == alone, "the running base generation changed while adapters were loaded"
        assert got_a.startswith("apples")
        # The base answers as before now that it is shared, and the adapters as themselves.
        assert stub.Chat(chat("tell me a story about a cat", **long), timeout=120).content == alone
        assert stub.Chat(chat("hi", model_path=str(paths["b"]), **GREEDY), timeout=60).content.startswith("bananas")


@pytest.mark.slow
def test_an_adapter_that_does_not_fit_its_base_is_refused_and_the_others_go_on(
        adapters, noisy_model_dir, tmp_path_factory):
    import shutil

    root, paths = adapters
    bad = root / "bad-rank"
    if not bad.exists():
        shutil.copytree(paths["b"], bad)
        cfg_path = bad / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["r"] = 4  # the saved weights are rank 8: they do not fit
        cfg_path.write_text(json.dumps(cfg))
    cfg = _config(tmp_path_factory, noisy_model_dir, root)
    with inference_server(cfg) as (_server, stub, servicer):
        base_answer = stub.Chat(chat("hi", **GREEDY), timeout=60).content
        # Refused as the base's first adapter (PeftModel.from_pretrained) ...
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadModel(pb.LoadModelRequest(model_path=str(bad)), timeout=120)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert stub.Chat(chat("hi", **GREEDY), timeout=60).content == base_answer
        stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["a"])), timeout=120)
        a_answer = stub.Chat(chat("hi", model_path=str(paths["a"]), **GREEDY), timeout=60).content
        assert a_answer.startswith("apples")
        # ... and as a further one (load_adapter).
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadModel(pb.LoadModelRequest(model_path=str(bad)), timeout=120)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert str(bad) in err.value.details()
        base_path = str(noisy_model_dir.resolve())
        assert list(_listed(stub)[base_path].adapters) == [str(paths["a"].resolve())]
        assert stub.Chat(chat("hi", **GREEDY), timeout=60).content == base_answer
        assert stub.Chat(chat("hi", model_path=str(paths["a"]), **GREEDY), timeout=60).content == a_answer
        # A good adapter still loads after the refused one.
        stub.LoadModel(pb.LoadModelRequest(model_path=str(paths["b"])), timeout=120)
        assert stub.Chat(chat("hi", model_path=str(paths["b"]), **GREEDY), timeout=60).content.startswith("bananas")
