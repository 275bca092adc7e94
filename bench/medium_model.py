"""The ~25M-parameter Qwen2 the benches use to show how a figure scales beyond the tiny
model: same tokenizer and vocabulary, bigger layers, random (seeded) weights."""

from __future__ import annotations

from pathlib import Path

# ~25M parameters with the tiny model's 6144-token vocabulary (tied embeddings).
MEDIUM_CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=7,
                     num_attention_heads=8, num_key_value_heads=2)


def build_medium_model(tiny_dir: Path, out_dir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny_dir))
    for key, value in MEDIUM_CONFIG.items():
        setattr(config, key, value)
    config.max_window_layers = MEDIUM_CONFIG["num_hidden_layers"]
    config.layer_types = ["full_attention"] * MEDIUM_CONFIG["num_hidden_layers"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(out_dir))
    return out_dir
