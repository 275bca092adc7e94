"""The embedded default behaves like a (very small) chat model, as served: greedy chat on the
chat set's openings returns the set's answer (or its beginning) for at least 80% of them, new
prompts get readable words in their own language rather than one repeated token, and answers
end with <|im_end|> (finish_reason "stop") rather than at max_tokens. The real committed
weights, the real inference engine."""

from __future__ import annotations

import re
import unicodedata

import pytest

from services.inference import engine
from services.inference.registry import ModelRegistry
from tests.support import make_config
from tools import pretrain
from tools.tiny_model import CORPUS_DIR, DATASETS_DIR

NEW_EN = ["Tell me something about the ocean.", "What should I cook tonight?", "Hi there, who are you?",
          "How do I learn to draw?"]
NEW_ZH = ["讲一个关于猫的故事", "今天心情不好怎么办", "你喜欢什么颜色？", "怎样才能睡得更好？"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("ws"), tiny_model_dir)
    registry = ModelRegistry(config)
    return registry.get(registry.default_source())


def chat(loaded, messages, max_tokens=64) -> engine.Completion:
    return engine.chat(loaded, messages, engine.SamplingParams(max_tokens=max_tokens), engine.RunControl())


def corpus_words() -> set[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in [*CORPUS_DIR.glob("*.txt"), DATASETS_DIR / "bilingual_chat.jsonl"])
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


# -- how answers are judged (so that the checks below can fail) -----------------------------

def test_answer_matching_is_strict(loaded):
    tok = loaded.tokenizer
    opening = [{"role": "user", "content": "What is Python?"}]
    answer = "Python is a language. It is popular."
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok(answer)["input_ids"]
    first = tok("Python is a language.")["input_ids"]
    assert pretrain.answer_matches(tok, opening, answer, ids + [eos])  # the whole answer
    assert pretrain.answer_matches(tok, opening, answer, ids[:4])  # cut by max_new_tokens
    assert pretrain.answer_matches(tok, opening, answer, first + [eos])  # its first sentence, then stop
    assert not pretrain.answer_matches(tok, opening, answer, ids[:3] + [eos])  # stops mid-sentence
    assert not pretrain.answer_matches(tok, opening, answer, [])
    assert not pretrain.answer_matches(tok, opening, answer, ids + ids[:2])  # runs on past the end
    assert not pretrain.answer_matches(tok, opening, answer, tok("Python is a snake.")["input_ids"] + [eos])


def test_openings_leave_aside_those_answered_two_ways():
    pairs = pretrain.unique_openings()
    assert 150 < len(pairs) < 360
    answers: dict[str, set[str]] = {}
    for conv in pretrain.chat_rows():
        n = 2 if conv[0]["role"] == "system" else 1
        answers.setdefault(repr(conv[:n]), set()).add(conv[n]["content"])
    assert len(pairs) == sum(1 for a in answers.values() if len(a) == 1)
    assert all(len(answers[repr(opening)]) == 1 for opening, _ in pairs)


# -- the model -----------------------------------------------------------------------------

@pytest.mark.slow
def test_greedy_chat_answers_the_corpus_openings(loaded):
    score, misses = pretrain.score_openings(loaded.model, loaded.tokenizer, max_new_tokens=48)
    assert score >= 0.80, f"{score:.1%} of the openings answered; misses: {misses[:10]}"
    # The same answers come out of the serving path (engine.chat), not only from generate().
    for opening, answer in pretrain.unique_openings()[:12]:
        got = chat(loaded, opening, max_tokens=48)
        if got.finish_reason == "stop":
            assert answer.startswith(got.content) or (opening[-1]["content"], answer, got.content) in misses


def readable(text: str, tokens: list[int], *, chinese: bool, words: set[str]) -> list[str]:
    """What is wrong with `text` as an answer in its language (empty: nothing)."""
    wrong = []
    letters = [ch for ch in text if unicodedata.category(ch).startswith("L")]
    own = sum(map(is_cjk, letters)) if chinese else sum(ch.isascii() for ch in letters)
    if not letters or own < 0.8 * len(letters):
        wrong.append(f"{own}/{len(letters)} letters in the prompt's script")
    if not tokens or max(tokens.count(t) for t in set(tokens)) > len(tokens) / 3:
        wrong.append("one token repeated")
    if chinese and len({ch for ch in text if is_cjk(ch)}) < 6:
        wrong.append("fewer than 6 distinct characters")
    found = re.findall(r"[A-Za-z]+", text)
    if not chinese and (len(found) < 4 or sum(w.lower() in words for w in found) < 0.8 * len(found)):
        wrong.append(f"{sum(w.lower() in words for w in found)}/{len(found)} words of the corpus")
    return wrong


@pytest.mark.parametrize("prompts,chinese", [(NEW_EN, False), (NEW_ZH, True)], ids=["english", "chinese"])
def test_new_prompts_get_words_of_their_language(loaded, prompts, chinese):
    """Prompts the chat set never asks: the answer is words of the prompt's language (often a
    memorised answer to another question: the model is tiny), never one repeated token. At
    least three of the four pass every check."""
    words = corpus_words()
    verdicts = {}
    for prompt in prompts:
        got = chat(loaded, [{"role": "user", "content": prompt}])
        tokens = loaded.tokenizer(got.content)["input_ids"]
        assert len(set(tokens)) > 1, (prompt, got.content)  # never one token over and over
        verdicts[prompt] = (got.content, readable(got.content, tokens, chinese=chinese, words=words))
    good = [p for p, (_, wrong) in verdicts.items() if not wrong]
    assert len(good) >= 3, verdicts


def test_readability_checks_can_fail():
    words = {"the", "cat", "sat", "on", "mat"}
    assert readable("The cat sat on the mat.", [1, 2, 3, 4, 1, 5, 6], chinese=False, words=words) == []
    assert readable("The cat 坐在垫子上面了呢 sat.", [1, 2, 3, 4], chinese=False, words=words)
    assert readable("Zxq vbn mlk wer.", [1, 2, 3, 4], chinese=False, words=words)
    assert readable("pppppppp", [7, 7, 7, 7], chinese=False, words=words | {"pppppppp"})
    assert readable("我你你今天你！", [1, 2, 3, 4, 5], chinese=True, words=words)
    assert readable("猫坐在垫子上。", [1, 2, 3], chinese=True, words=words) == []


def test_answers_end_with_im_end(loaded):
    prompts = [[{"role": "user", "content": p}] for p in NEW_EN + NEW_ZH]
    prompts += [opening for opening, answer in pretrain.unique_openings() if len(answer) < 60][:8]
    results = [chat(loaded, p, max_tokens=128) for p in prompts]
    stopped = [r for r in results if r.finish_reason == "stop"]
    assert len(stopped) >= 0.9 * len(results), [(p[-1]["content"], r.content) for p, r in zip(prompts, results)
                                                 if r.finish_reason != "stop"]
    assert all(r.completion_tokens < 128 and r.content.strip() for r in stopped)
