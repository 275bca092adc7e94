"""The embedded tiny chat model and the bundled datasets: the tokenizer survives a save/load
round trip as Qwen2 with identical ids, the ChatML template and its assistant mask are exact,
the model loads from safetensors and generates, builds are byte-identical and atomic, and the
datasets have the shape the rest of the project relies on."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import pytest

from tools import make_datasets, tiny_model
from tools.tiny_model import DATASETS_DIR, IM_END, build_tiny_model, ensure_workspace_seed

TEXTS = [
    "Hello, how are you?  I'm fine!\n\n\tx = 1  # comment\n",
    "What's the capital of Zorbia? It's Quellport, 12,345 km away.",
    "你好！我是AI助手，很高兴为您服务。深度学习是机器学习的子集。",
    "混合 text: Python是一种编程语言 (programming language)，版本3.11。\r\n",
    "emoji 😀 and rare 龘 characters, café",
    "<|im_start|>user\nhi<|im_end|>\n<think>\nhmm\n</think>",
]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is Python?"},
    {"role": "assistant", "content": "Python is a programming language."},
    {"role": "user", "content": "用中文说一下"},
    {"role": "assistant", "content": "Python是一种编程语言。"},
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def has_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.fixture(scope="module")
def trained_tokenizer():
    """The tokenizer object exactly as the build trains it, before any save."""
    return tiny_model.train_tokenizer()


@pytest.fixture(scope="module")
def loaded_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# -- tokenizer -----------------------------------------------------------------------------

def test_reload_is_qwen2_with_identical_ids(tiny_model_dir, trained_tokenizer, loaded_tokenizer):
    from transformers import Qwen2Tokenizer

    assert type(loaded_tokenizer).__name__ == "Qwen2TokenizerFast"
    assert json.loads((tiny_model_dir / "config.json").read_text())["model_type"] == "qwen2"
    # The slow tokenizer rebuilds everything from vocab.json/merges.txt and Qwen2's regex:
    # it only agrees if the BPE was trained with Qwen2's own pre-tokenization.
    slow = Qwen2Tokenizer.from_pretrained(tiny_model_dir)
    rows = read_jsonl(DATASETS_DIR / "bilingual_chat.jsonl")[:40]
    texts = TEXTS + [m["content"] for row in rows for m in row["conversations"]]
    for text in texts:
        ids = trained_tokenizer(text)["input_ids"]
        assert loaded_tokenizer(text)["input_ids"] == ids, text
        assert slow(text)["input_ids"] == ids, text


def test_decode_round_trips(loaded_tokenizer):
    import unicodedata

    for text in TEXTS:
        ids = loaded_tokenizer(text)["input_ids"]
        assert loaded_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_special_tokens(loaded_tokenizer, tiny_model_dir):
    tok = loaded_tokenizer
    assert tok.eos_token == IM_END and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.padding_side == "right"
    assert len(tok) == tiny_model.VOCAB_SIZE
    assert 4000 <= len(tok) <= 8000
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert len(tok(special)["input_ids"]) == 1, special
    # The think markers stay visible when special tokens are skipped (as in Qwen3).
    assert tok.decode(tok("<think>x</think><|im_end|>")["input_ids"], skip_special_tokens=True) == "<think>x</think>"
    # Every byte is in the alphabet, so no text is ever unknown.
    assert len(tok("\x00\x7f\xff")["input_ids"]) >= 1
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.eos_token_id and generation["pad_token_id"] == tok.pad_token_id


def test_chinese_is_not_byte_soup(loaded_tokenizer):
    # Characters the corpus uses are whole tokens or merged further; ~1 token per char or better.
    text = "机器学习是人工智能的一个分支，让计算机从数据中总结规律。"
    assert len(loaded_tokenizer(text)["input_ids"]) < len(text)


# -- chat template -------------------------------------------------------------------------

def test_template_renders_chatml(loaded_tokenizer):
    rendered = loaded_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is Python?<|im_end|>\n"
        "<|im_start|>assistant\nPython is a programming language.<|im_end|>\n"
        "<|im_start|>user\n用中文说一下<|im_end|>\n"
        "<|im_start|>assistant\nPython是一种编程语言。<|im_end|>\n"
    )
    prompt = loaded_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is Python?<|im_end|>\n<|im_start|>assistant\n"
    )
    for thinking in (False, True):
        assert loaded_tokenizer.apply_chat_template(
            CONVERSATION[:2], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        ) == prompt


def test_assistant_mask_is_content_and_im_end(loaded_tokenizer):
    tok = loaded_tokenizer
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans, current = [], []
    for token_id, flag in zip(ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    expected = [m["content"] + IM_END for m in CONVERSATION if m["role"] == "assistant"]
    assert [tok.decode(span) for span in spans] == expected
    # Each span is exactly the content's own tokens followed by <|im_end|>.
    for span, message in zip(spans, [m for m in CONVERSATION if m["role"] == "assistant"]):
        assert span == tok(message["content"])["input_ids"] + [tok.eos_token_id]


def test_trl_sees_generation_markers_and_trained_stop_token(loaded_tokenizer):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(loaded_tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(loaded_tokenizer)


# -- model ---------------------------------------------------------------------------------

def test_model_loads_from_safetensors_and_generates(tiny_model_dir, loaded_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True, trust_remote_code=False)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.vocab_size == len(loaded_tokenizer)
    assert model.config.tie_word_embeddings
    assert 1_000_000 < model.num_parameters() < 10_000_000
    ids = loaded_tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8
    assert torch.equal(out[0, : ids.shape[1]], ids[0])


def test_builds_are_byte_identical_and_seeded(tiny_model_dir, tmp_path):
    second = build_tiny_model(tmp_path / "again")
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert sha256(tiny_model_dir / name) == sha256(second / name), name
    # Nothing temporary is left beside the target.
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_seed_changes_weights_only(trained_tokenizer):
    import torch

    a = tiny_model.make_model(trained_tokenizer, seed=0).state_dict()
    b = tiny_model.make_model(trained_tokenizer, seed=1).state_dict()
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"])


def test_build_is_idempotent_and_force_rebuilds(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "tiny-chat"
    shutil.copytree(tiny_model_dir, copy)
    marker = copy / "model.safetensors"
    before = marker.stat().st_mtime_ns
    assert build_tiny_model(copy) == copy
    assert marker.stat().st_mtime_ns == before  # complete folder: left alone
    (copy / "config.json").unlink()  # incomplete folder: rebuilt
    build_tiny_model(copy)
    assert tiny_model.is_complete(copy)
    assert not tiny_model.is_complete(copy, random_seed=1)  # a random init asks for other weights
    info = copy / tiny_model.BUILD_INFO_FILE
    assert '"version": 2' in info.read_text()
    info.write_text(info.read_text().replace('"version": 2', '"version": 1'))
    assert not tiny_model.is_complete(copy)  # an older recipe is rebuilt
    build_tiny_model(copy)
    assert tiny_model.is_complete(copy)
    (copy / "extra.txt").write_text("x")
    build_tiny_model(copy, force=True)
    assert not (copy / "extra.txt").exists()
    assert sha256(copy / "model.safetensors") == sha256(tiny_model_dir / "model.safetensors")


# -- the pre-trained weights ---------------------------------------------------------------

def test_committed_weights_match_the_recipe(trained_tokenizer):
    """Stale weights fail here: the stamp recorded with the committed weights is the hash of
    today's recipe (tools/pretrain.py, the chat set, the tokenizer, the model config)."""
    from tools import pretrain

    assert tiny_model.pretrained_stamp() == pretrain.recipe_stamp(trained_tokenizer), (
        "the recipe changed since the weights were trained: run `make model-train` and commit "
        "services/common/assets/tiny_model/")


def test_the_stamp_changes_with_each_part_of_the_recipe(trained_tokenizer, monkeypatch, tmp_path):
    from tools import pretrain

    base = pretrain.recipe_stamp(trained_tokenizer)
    assert pretrain.recipe_stamp(trained_tokenizer) == base
    assert pretrain.recipe_stamp(trained_tokenizer, epochs=pretrain.EPOCHS + 1) != base
    with monkeypatch.context() as patch:
        changed = tmp_path / "bilingual_chat.jsonl"
        changed.write_bytes(pretrain.CHAT_DATASET.read_bytes().replace(b"Quellport", b"Quellpart", 1) + b"\n")
        patch.setattr(pretrain, "CHAT_DATASET", changed)
        assert pretrain.recipe_stamp(trained_tokenizer) != base
    with monkeypatch.context() as patch:
        patch.setitem(tiny_model.MODEL_CONFIG, "intermediate_size", tiny_model.MODEL_CONFIG["intermediate_size"] + 64)
        assert pretrain.recipe_stamp(trained_tokenizer) != base
    with monkeypatch.context() as patch:
        patch.setattr(tiny_model, "CHAT_TEMPLATE", tiny_model.CHAT_TEMPLATE.replace("assistant", "bot"))
        assert pretrain.recipe_stamp(trained_tokenizer) != base
    # Another tokenizer (here: fewer merges) is another recipe.
    assert pretrain.recipe_stamp(tiny_model.train_tokenizer(vocab_size=tiny_model.VOCAB_SIZE - 64)) != base


def test_stale_weights_are_refused_with_the_way_out(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stamp": "0" * 64}))
    monkeypatch.setattr(tiny_model, "PRETRAINED_RECIPE", recipe)
    with pytest.raises(tiny_model.StaleWeights, match="make model-train"):
        build_tiny_model(tmp_path / "stale")
    assert not (tmp_path / "stale").exists()
    assert tiny_model.main(["--out", str(tmp_path / "stale"), "--no-seed-datasets"]) == 1
    assert "make model-train" in capsys.readouterr().err


def test_model_folder_holds_the_committed_weights(tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    built = load_file(str(tiny_model_dir / "model.safetensors"))
    committed = load_file(str(tiny_model.PRETRAINED_WEIGHTS))
    assert tiny_model.PRETRAINED_WEIGHTS.stat().st_size < 8_000_000
    assert set(committed) == set(built) - {"lm_head.weight"}
    for name, tensor in committed.items():
        assert tensor.dtype == torch.float16, name
        assert built[name].dtype == torch.float32 and torch.equal(built[name], tensor.float()), name
    info = json.loads((tiny_model_dir / tiny_model.BUILD_INFO_FILE).read_text())
    assert info["weights"] == "pretrained" and info["stamp"] == tiny_model.pretrained_stamp()


def test_random_seed_builds_the_untrained_model(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = build_tiny_model(tmp_path / "random", random_seed=3)
    assert tiny_model.is_complete(out, random_seed=3)
    assert not tiny_model.is_complete(out) and not tiny_model.is_complete(tiny_model_dir, random_seed=3)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(load_file(str(out / "model.safetensors"))[name],
                           load_file(str(tiny_model_dir / "model.safetensors"))[name])


def test_cli_builds_and_seeds(tiny_model_dir, tmp_path, capsys):
    import shutil

    workspace = tmp_path / "var"
    shutil.copytree(tiny_model_dir, workspace / "models" / "tiny-chat")
    assert tiny_model.main(["--workspace", str(workspace)]) == 0
    printed = capsys.readouterr().out
    assert "already built" in printed and "seeded 4" in printed
    assert sorted(p.name for p in (workspace / "datasets").iterdir()) == [
        "bilingual_chat.jsonl", "preference_pairs.jsonl", "qa_facts.jsonl", "train_sample.jsonl"
    ]


def test_workspace_seed_copies_once_and_keeps_user_edits(tmp_path):
    copied = ensure_workspace_seed(tmp_path)
    names = sorted(p.name for p in copied)
    assert names == ["bilingual_chat.jsonl", "preference_pairs.jsonl", "qa_facts.jsonl", "train_sample.jsonl"]
    for path in copied:
        assert path.read_bytes() == (DATASETS_DIR / path.name).read_bytes()
        assert path.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600
    edited = tmp_path / "datasets" / "qa_facts.jsonl"
    edited.write_text("{}\n")
    assert ensure_workspace_seed(tmp_path) == []
    assert edited.read_text() == "{}\n"


# -- bundled data --------------------------------------------------------------------------

def check_conversation(conv) -> None:
    """A valid chat: optional leading system message, then user/assistant turns that
    alternate and end with the assistant, every content a non-empty string."""
    assert isinstance(conv, list) and conv
    for message in conv:
        assert set(message) == {"role", "content"}
        assert isinstance(message["content"], str) and message["content"].strip()
    roles = [m["role"] for m in conv]
    if roles[0] == "system":
        roles = roles[1:]
    assert roles and len(roles) % 2 == 0
    assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_bilingual_chat_dataset():
    path = DATASETS_DIR / "bilingual_chat.jsonl"
    raw = path.read_text(encoding="utf-8")
    assert "\\u" not in raw  # Chinese is stored unescaped
    rows = read_jsonl(path)
    assert len(rows) >= 300
    convs = [row["conversations"] for row in rows]
    for conv in convs:
        check_conversation(conv)
    text = ["".join(m["content"] for m in conv) for conv in convs]
    assert sum(has_chinese(t) for t in text) >= 100
    assert sum(not has_chinese(t) for t in text) >= 100
    turns = [sum(m["role"] == "user" for m in conv) for conv in convs]
    assert turns.count(1) >= 100 and sum(t > 1 for t in turns) >= 30
    assert sum(conv[0]["role"] == "system" for conv in convs) >= 20
    lengths = [len(t) for t in text]
    median = statistics.median(lengths)
    p90 = statistics.quantiles(lengths, n=10)[-1]
    assert p90 > 3 * median, (median, p90)
    assert max(lengths) > 1000


def test_qa_facts_dataset():
    rows = read_jsonl(DATASETS_DIR / "qa_facts.jsonl")
    assert 8 <= len(rows) <= 12
    pairs = [(r["conversations"][0]["content"], r["conversations"][1]["content"]) for r in rows]
    for row in rows:
        check_conversation(row["conversations"])
        assert len(row["conversations"]) == 2
    assert len({q for q, _ in pairs}) == len(pairs) and len({a for _, a in pairs}) == len(pairs)
    assert any(has_chinese(q) for q, _ in pairs) and any(not has_chinese(q) for q, _ in pairs)
    # Invented facts: a model can only answer them by being trained on them.
    corpus = "".join(p.read_text(encoding="utf-8") for p in tiny_model.corpus_files())
    for _, answer in pairs:
        assert answer not in corpus


def test_train_sample_is_the_shared_sample():
    rows = read_jsonl(DATASETS_DIR / "train_sample.jsonl")
    assert len(rows) == 5
    for row in rows:
        check_conversation(row["conversations"])
    shared = Path("/work/shared/data/train_sample.jsonl")
    if shared.is_file():
        assert (DATASETS_DIR / "train_sample.jsonl").read_bytes() == shared.read_bytes()


def test_corpus_is_bilingual_without_chat_markers():
    texts = [p.read_text(encoding="utf-8") for p in tiny_model.corpus_files()]
    corpus = "".join(texts)
    assert 100_000 < len(corpus.encode("utf-8")) < 1_000_000
    assert has_chinese(corpus) and "the" in corpus
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>"):
        assert marker not in corpus


def test_committed_assets_match_generator():
    """The committed corpus and datasets are exactly what make_datasets.py writes."""
    for name, text in make_datasets.make_corpus().items():
        assert (tiny_model.CORPUS_DIR / name).read_text(encoding="utf-8") == text, name
    expected = "".join(
        json.dumps({"conversations": r}, ensure_ascii=False) + "\n" for r in make_datasets.make_bilingual_chat()
    )
    assert (DATASETS_DIR / "bilingual_chat.jsonl").read_text(encoding="utf-8") == expected
    facts = [(r["conversations"][0]["content"], r["conversations"][1]["content"])
             for r in read_jsonl(DATASETS_DIR / "qa_facts.jsonl")]
    assert facts == list(make_datasets.QA_FACTS)
