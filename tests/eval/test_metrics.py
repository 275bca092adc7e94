"""Token metrics against a manual forward pass, masking, batching, truncation, skipping."""

from __future__ import annotations

import json
import math

import pytest

from services.common.errors import InvalidArgument
from services.common.modeling import resolve_model_source
from services.eval.generation_metrics import exact_match, normalize_answer, qa_item
from services.eval.metrics import aggregate, encode_conversation, encode_conversations, score_samples
from services.eval.runner import EvalJob, parse_metrics, run_evaluation
from tests.eval.conftest import BILINGUAL, QA_FACTS, read_conversations, write_rows


def _manual(model_dir, conversations):
    """Loss and token accuracy the slow, obvious way: one conversation at a time, labels
    -100 outside assistant tokens, the model's own shifted loss, weighted by token count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    loss_sum, tokens, correct = 0.0, 0, 0
    with torch.no_grad():
        for conv in conversations:
            enc = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]])
            labels = ids.clone()
            labels[0, torch.tensor(enc["assistant_masks"]) == 0] = -100
            out = model(input_ids=ids, labels=labels)
            scored = labels[0, 1:] != -100
            n = int(scored.sum())
            loss_sum += float(out.loss) * n
            tokens += n
            correct += int(((out.logits[0, :-1].argmax(-1) == ids[0, 1:]) & scored).sum())
    return loss_sum / tokens, correct / tokens, tokens


def _mixed_rows():
    # Facts the tuned model knows, plus general chat it does not: accuracy lands between 0 and 1.
    # The bilingual rows include a system message and multi-turn conversations.
    return read_conversations(QA_FACTS, 4) + read_conversations(BILINGUAL, 6)


@pytest.mark.slow
def test_loss_and_accuracy_match_a_manual_masked_forward(eval_config, eval_models, workspace):
    rows = _mixed_rows()
    data = write_rows(workspace / "mixed.jsonl", rows)
    source = resolve_model_source(eval_models["tuned"], eval_config)
    result = run_evaluation(EvalJob(model=source, dataset_path=data, metrics=["loss", "accuracy", "perplexity"],
                                    batch_size=4), eval_config)
    loss, accuracy, tokens = _manual(eval_models["tuned"], rows)
    assert 0.0 < accuracy < 1.0
    assert result.metrics["loss"] == pytest.approx(loss, abs=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-5)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result.tokens_scored == tokens
    assert result.total_samples == len(rows)


def test_mask_covers_exactly_assistant_content_and_end_token(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    conv = next(c for c in read_conversations(BILINGUAL) if len(c) >= 4)
    sample = encode_conversation(tok, conv, 0, max_length=4096)
    scored = [t for t, m in zip(sample.input_ids, sample.assistant_mask) if m]
    expected = "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant")
    assert tok.decode(scored) == expected
    assert not sample.truncated


def test_batched_encoding_matches_one_by_one_and_isolates_a_row_the_template_refuses(tiny_model_dir):
    from transformers import AutoTokenizer

    from tools.tiny_model import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    convs = read_conversations(BILINGUAL, 40)
    single = [encode_conversation(tok, c, i, 128) for i, c in enumerate(convs)]
    assert encode_conversations(tok, convs, 128, chunk=16) == single
    assert any(s.truncated for s in single) and not all(s.truncated for s in single)

    tok.chat_template = CHAT_TEMPLATE + (
        "{%- if messages[0]['content'] == 'boom' %}{{ raise_exception('boom row') }}{%- endif %}")
    bad = [{"role": "user", "content": "boom"}, {"role": "assistant", "content": "x"}]
    out = encode_conversations(tok, convs[:5] + [bad] + convs[5:9], 512, chunk=4)
    assert len(out) == 10
    assert isinstance(out[5], Exception) and "boom row" in str(out[5])
    good = [s for s in out if not isinstance(s, Exception)]
    assert [s.index for s in good] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [s.input_ids for s in good] == [encode_conversation(tok, c, 0, 512).input_ids for c in convs[:9]]


def test_batch_size_does_not_change_token_weighted_metrics(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    convs = read_conversations(BILINGUAL, 9)
    samples = [encode_conversation(tok, c, i, 512) for i, c in enumerate(convs)]
    one = score_samples(model, samples, batch_size=1, pad_token_id=tok.pad_token_id)
    four = score_samples(model, samples, batch_size=4, pad_token_id=tok.pad_token_id)
    assert [s.index for s in one] == [s.index for s in four] == list(range(len(convs)))
    assert aggregate(four).loss == pytest.approx(aggregate(one).loss, abs=1e-5)
    assert aggregate(four).token_accuracy == pytest.approx(aggregate(one).token_accuracy, abs=1e-9)
    for a, b in zip(one, four):
        assert a.tokens == b.tokens
        assert a.loss == pytest.approx(b.loss, abs=1e-4)
    # Token weighting is not a mean of per-sample means: lengths differ, so those differ.
    lengths = {s.tokens for s in one}
    assert len(lengths) > 1
    mean_of_means = sum(s.loss for s in one) / len(one)
    assert aggregate(one).loss == pytest.approx(sum(s.loss_sum for s in one) / sum(s.tokens for s in one))
    assert abs(aggregate(one).loss - mean_of_means) > 1e-6


def test_truncation_is_counted_and_rows_cut_before_any_answer_are_skipped(config, workspace, tiny_model_dir):
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    long_answer = [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "word " * 200}]
    long_question = [{"role": "user", "content": "why " * 200}, {"role": "assistant", "content": "because"}]
    data = write_rows(workspace / "d.jsonl", [short, long_answer, long_question])
    cfg = config.with_overrides({"eval.max_length": 48})
    per_sample = workspace / "out" / "per_sample.jsonl"
    result = run_evaluation(EvalJob(model=resolve_model_source(tiny_model_dir, cfg), dataset_path=data,
                                    metrics=["loss"], batch_size=2, per_sample_path=per_sample), cfg)
    assert result.total_samples == 2
    assert result.truncated_samples == 1
    assert result.skip_reasons == {"assistant_truncated_away": 1}
    assert result.skipped_samples == 1
    lines = [json.loads(x) for x in per_sample.read_text(encoding="utf-8").splitlines()]
    assert [x["line"] for x in lines] == [1, 2]
    assert [x["truncated"] for x in lines] == [False, True]
    # The truncated row scores only what fits in 48 tokens.
    assert 0 < lines[1]["tokens"] < 48


def test_invalid_rows_are_skipped_with_reasons(config, workspace, tiny_model_dir):
    good = read_conversations(QA_FACTS, 3)
    data = write_rows(workspace / "d.jsonl", good + [
        "{not json",
        json.dumps({"messages": []}),
        json.dumps({"conversations": [{"role": "assistant", "content": "answer first"}]}),
    ])
    result = run_evaluation(EvalJob(model=resolve_model_source(tiny_model_dir, config), dataset_path=data,
                                    metrics=["token_accuracy"], batch_size=8), config)
    assert result.total_samples == 3
    assert result.skipped_samples == 3
    assert sum(result.skip_reasons.values()) == 3
    assert set(result.metrics) == {"token_accuracy"}


def test_no_usable_rows_is_invalid_argument(config, workspace, tiny_model_dir):
    data = write_rows(workspace / "d.jsonl", ["{not json", "[1, 2]"])
    with pytest.raises(InvalidArgument) as err:
        run_evaluation(EvalJob(model=resolve_model_source(tiny_model_dir, config), dataset_path=data,
                               metrics=["loss"], batch_size=8), config)
    assert err.value.field_violations[0][0] == "dataset_path"
    assert "no usable rows" in err.value.message
    assert "ProcessDataset" not in err.value.message


def test_rows_in_a_format_the_data_service_converts_are_named_with_the_fix(config, workspace, tiny_model_dir):
    openai = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    alpaca = json.dumps({"instruction": "add", "input": "1+1", "output": "2"})
    data = write_rows(workspace / "other.jsonl", [openai, openai, alpaca])
    with pytest.raises(InvalidArgument) as err:
        run_evaluation(EvalJob(model=resolve_model_source(tiny_model_dir, config), dataset_path=data,
                               metrics=["loss"], batch_size=8), config)
    assert "openai_format: 2" in err.value.message and "alpaca_format: 1" in err.value.message
    assert "rows in the alpaca / openai format can be converted" in err.value.message
    assert "ProcessDataset" in err.value.message
    # Beside usable rows, they are skipped under the same names.
    usable = write_rows(workspace / "mixed.jsonl", read_conversations(BILINGUAL, 2) + [openai])
    result = run_evaluation(EvalJob(model=resolve_model_source(tiny_model_dir, config), dataset_path=usable,
                                    metrics=["loss"], batch_size=8), config)
    assert result.skip_reasons == {"openai_format": 1} and result.total_samples == 2


def test_parse_metrics():
    assert parse_metrics(["Loss", "accuracy", "loss", " rouge "]) == ["loss", "accuracy", "rouge"]
    with pytest.raises(InvalidArgument) as err:
        parse_metrics(["loss", "bleu"])
    assert err.value.field_violations[0][0] == "metrics"
    for name in ("loss", "perplexity", "accuracy", "token_accuracy", "exact_match", "rouge"):
        assert name in err.value.message
    with pytest.raises(InvalidArgument):
        parse_metrics([])


def test_exact_match_normalisation_and_question_answer_pairs():
    assert normalize_answer("  The Capital,   is QUELLPORT! ") == "the capital is quellport"
    assert exact_match("泽洛比亚的首都是青石港。", "泽洛比亚的首都是青石港") == 1.0
    assert exact_match("ＡＢＣ", "abc") == 1.0  # full-width folds to ASCII
    assert exact_match("Quellport", "The capital is Quellport.") == 0.0
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"}]
    item = qa_item(7, conv)
    assert item.index == 7 and item.reference == "a2"
    assert [m["content"] for m in item.prompt] == ["s", "q1", "a1", "q2"]
    assert qa_item(0, [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]) is None


def test_logits_post_processed_after_the_head_fall_back_to_the_full_forward(tiny_model_dir):
    """The head-only fast path is used only when it reproduces the model's own logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.eval.metrics import _ScoredLogits

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()

    class SoftCapped(torch.nn.Module):
        """A model that soft-caps its logits after the head (as Gemma 2 does)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_decoder(self):
            return self.inner.get_decoder()

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)
            return out

    capped = SoftCapped(model).eval()
    samples = [encode_conversation(tok, c, i, 512) for i, c in enumerate(read_conversations(BILINGUAL, 5))]
    plain, wrapped = _ScoredLogits(model), _ScoredLogits(capped)
    with torch.inference_mode():
        plain.verify(samples[0], "cpu")
        wrapped.verify(samples[0], "cpu")
    assert plain.split is not None and wrapped.split is None
    capped_loss = aggregate(score_samples(capped, samples, batch_size=2, pad_token_id=tok.pad_token_id)).loss
    plain_loss = aggregate(score_samples(model, samples, batch_size=2, pad_token_id=tok.pad_token_id)).loss
    assert capped_loss != pytest.approx(plain_loss, abs=1e-3)
    # The capped model scored through its own forward: same as a manual loss on capped logits.
    with torch.inference_mode():
        total = count = 0.0
        for s in samples:
            ids = torch.tensor([s.input_ids])
            logits = capped(input_ids=ids).logits[0, :-1]
            mask = torch.tensor(s.assistant_mask[1:]).bool()
            total += float(torch.nn.functional.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum"))
            count += int(mask.sum())
    assert capped_loss == pytest.approx(total / count, abs=1e-5)
