"""merge_untied (services.common.modeling): merging a LoRA adapter that changes lm_head of a base
whose lm_head is tied to the input embeddings must change only the output head. Real PEFT, the
real tiny model (its lm_head is tied)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from services.common.modeling import merge_untied

IDS = torch.tensor([[1, 5, 9, 42, 7, 3]])


def _adapted(model_dir, **lora):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    # init_lora_weights=False: B is random, so the adapter really changes the outputs
    peft = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False, **lora))
    if lora.get("modules_to_save"):
        with torch.no_grad():
            peft.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.5)
    peft.eval()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        logits = peft(input_ids=IDS).logits
    return peft, embeddings, logits


@pytest.mark.parametrize("lora", [{"target_modules": ["q_proj", "lm_head"]},
                                  {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}],
                         ids=["lm_head-targeted", "lm_head-saved"])
def test_merge_changes_only_the_head_and_survives_a_save(tiny_model_dir, tmp_path, lora):
    peft, embeddings, logits = _adapted(tiny_model_dir, **lora)
    merged = merge_untied(peft)
    assert torch.equal(merged.get_input_embeddings().weight, embeddings)  # the input embeddings are untouched
    assert merged.lm_head.weight is not merged.get_input_embeddings().weight
    assert merged.config.tie_word_embeddings is False
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=IDS).logits, logits, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(again(input_ids=IDS).logits, logits, atol=1e-4)


def test_plain_merge_rewrites_the_tied_embeddings(tiny_model_dir):
    """Why merge_untied exists: PEFT's merge writes the head's delta into the shared tensor."""
    peft, embeddings, logits = _adapted(tiny_model_dir, target_modules=["q_proj", "lm_head"])
    with pytest.warns(UserWarning, match="tie_word_embeddings"):
        merged = peft.merge_and_unload()
    assert not torch.equal(merged.get_input_embeddings().weight, embeddings)
    with torch.no_grad():
        assert not torch.allclose(merged(input_ids=IDS).logits, logits, atol=1e-3)


def test_an_adapter_without_the_head_keeps_the_tie(tiny_model_dir):
    peft, embeddings, logits = _adapted(tiny_model_dir, target_modules=["q_proj", "v_proj"])
    merged = merge_untied(peft)
    assert merged.config.tie_word_embeddings is True
    assert merged.lm_head.weight is merged.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=IDS).logits, logits, atol=1e-4)
