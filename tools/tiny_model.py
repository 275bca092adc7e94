"""The embedded default model: a tiny bilingual chat model, built locally with no download.

`build_tiny_model(folder)` trains a byte-level BPE tokenizer on the bundled corpus
(``assets/corpus``) with Qwen2's own pre-tokenization, gives it a ChatML chat template whose
assistant turns are wrapped in ``{% generation %}`` (so assistant-only loss masks work), and
saves it next to a few-million-parameter ``Qwen2ForCausalLM`` in safetensors (float32).
The weights are the pre-trained ones committed under ``assets/tiny_model/`` (float16, written
by ``python -m tools.pretrain``, see there); the build only checks their recipe stamp, widens
them to float32 and saves, so it takes seconds and the same inputs give byte-identical files.
`build_tiny_model(folder, random_seed=N)` builds the untrained, randomly initialised model.

`ensure_workspace_seed(workspace)` copies the bundled datasets into ``<workspace>/datasets``.

CLI::

    python -m tools.tiny_model --workspace var    # var/models/tiny-chat + var/datasets
    python -m tools.tiny_model --out some/folder [--force] [--random-seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "services" / "common" / "assets"
CORPUS_DIR = ASSETS_DIR / "corpus"
DATASETS_DIR = ASSETS_DIR / "datasets"
MODEL_DIRNAME = "tiny-chat"

# Qwen2's split regex, verbatim from transformers' Qwen2Converter. When `model_type` is qwen2
# a loader may rebuild the pre-tokenizer from it, so training with anything else would make
# ids differ between the tokenizer we save and the one that is loaded.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Qwen3 keeps the think markers as added tokens that are *not* special, so decoding with
# skip_special_tokens still shows them.
THINK_TOKENS = ("<think>", "</think>")
VOCAB_SIZE = 6144  # tokens in all, special and added ones included
MODEL_MAX_LENGTH = 1024

# ChatML. The assistant content and its <|im_end|> sit inside {% generation %} so that
# `return_assistant_tokens_mask=True` (TRL's assistant_only_loss) trains the model to stop;
# the newline after <|im_end|> stays outside, as it is never generated. Extra variables such
# as Qwen3's `enable_thinking` are accepted and ignored: the tiny model never thinks.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- (message['content'] if message['content'] is string else '') + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] if message['content'] is string else '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Small enough to build in a second and pre-train on two CPU cores in minutes, big enough to
# memorise the bundled chat set's answers.
MODEL_CONFIG = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MODEL_MAX_LENGTH,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    initializer_range=0.02,
)

# The pre-trained weights (tools/pretrain.py writes them; tied lm_head left out).
PRETRAINED_DIR = ASSETS_DIR / "tiny_model"
PRETRAINED_WEIGHTS = PRETRAINED_DIR / "model.fp16.safetensors"
PRETRAINED_RECIPE = PRETRAINED_DIR / "recipe.json"

# Bump when the build changes (template, config, how weights are made): folders built by an
# older recipe then count as incomplete and are rebuilt on the next run. The build record
# also holds the pre-trained weights' recipe stamp, so new weights rebuild the folder too.
BUILD_VERSION = 2
BUILD_INFO_FILE = "tiny_model_build.json"
# Files whose presence makes a model folder complete (it is written atomically, so a folder
# that has them all is one finished build).
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    BUILD_INFO_FILE,
)


def corpus_files() -> list[Path]:
    """The bundled corpus, in a fixed order (the order feeds the BPE trainer)."""
    files = sorted(CORPUS_DIR.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no corpus files in {CORPUS_DIR}")
    return files


def train_tokenizer(vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE on the bundled corpus and return it as a `Qwen2TokenizerFast`
    with the ChatML template, eos ``<|im_end|>`` and pad ``<|endoftext|>``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Qwen2TokenizerFast

    # Same components as transformers' Qwen2Converter.
    tok = Tokenizer(
        models.BPE(
            unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [p.read_text(encoding="utf-8") for p in corpus_files()]
    # One paragraph per training "sequence"; blank lines separate paragraphs in the corpus.
    paragraphs = [para for text in texts for para in text.split("\n\n") if para.strip()]
    tok.train_from_iterator(paragraphs, trainer=trainer, length=len(paragraphs))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])

    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )


def make_model(tokenizer, *, seed: int = 0):
    """A randomly initialised `Qwen2ForCausalLM` for `tokenizer`, its weights a function of
    `seed` alone (the starting point of tools/pretrain.py)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    im_end, pad = tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=pad,
        max_window_layers=MODEL_CONFIG["num_hidden_layers"],
        torch_dtype="float32",
        **MODEL_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=im_end, pad_token_id=pad, do_sample=False, max_new_tokens=128
    )
    model.eval()
    return model


def pretrained_stamp() -> str | None:
    """The recipe stamp recorded with the committed weights (None if there are none)."""
    try:
        return json.loads(PRETRAINED_RECIPE.read_text(encoding="utf-8"))["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build_info(random_seed: int | None) -> dict:
    if random_seed is not None:
        return {"builder": "tools.tiny_model", "version": BUILD_VERSION, "weights": "random", "seed": random_seed}
    return {"builder": "tools.tiny_model", "version": BUILD_VERSION, "weights": "pretrained",
            "stamp": pretrained_stamp()}


def is_complete(folder: Path, *, random_seed: int | None = None) -> bool:
    """True when `folder` holds a finished build of the current recipe (the pre-trained
    weights, or the random init of `random_seed`)."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        return json.loads((folder / BUILD_INFO_FILE).read_text(encoding="utf-8")) == _build_info(random_seed)
    except (OSError, ValueError):
        return False


class StaleWeights(RuntimeError):
    """The committed weights were trained on another recipe than the current one."""


def load_pretrained(model, *, tokenizer=None, check_stamp: bool = True, path: Path = PRETRAINED_WEIGHTS):
    """Put the committed float16 weights into `model` (as float32). With `check_stamp`, a
    stamp that is not the current recipe's (tools.pretrain.recipe_stamp) raises StaleWeights."""
    import torch
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise StaleWeights(f"no pre-trained weights at {path}: run `make model-train`")
    if check_stamp:
        from tools.pretrain import recipe_stamp

        want, have = recipe_stamp(tokenizer), pretrained_stamp()
        if have != want:
            raise StaleWeights(
                f"the weights in {PRETRAINED_WEIGHTS} were trained on another recipe (stamp {have}, the corpus, "
                f"chat set, tokenizer, config and tools/pretrain.py now give {want}): run `make model-train`")
    state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise StaleWeights(f"{path} does not fit the model config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def build_tiny_model(output_dir: Path, *, random_seed: int | None = None, force: bool = False) -> Path:
    """Build the tiny chat model into `output_dir` and return that path: the pre-trained
    weights, or with `random_seed` an untrained model initialised from that seed.

    Idempotent: a complete folder (every file, and a build record of this recipe) is left
    alone unless `force`; anything else at that path is replaced. The build happens in a
    temporary sibling folder that is renamed into place, so `output_dir` is never seen
    half-written. Same inputs -> byte-identical files. Raises StaleWeights when the committed
    weights do not match the current recipe.
    """
    from services.common.fsutil import atomic_directory

    output_dir = Path(output_dir)
    if is_complete(output_dir, random_seed=random_seed) and not force:
        return output_dir
    tokenizer = train_tokenizer()
    model = make_model(tokenizer, seed=0 if random_seed is None else random_seed)
    if random_seed is None:
        load_pretrained(model, tokenizer=tokenizer)
    with atomic_directory(output_dir, overwrite=True) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / BUILD_INFO_FILE).write_text(json.dumps(_build_info(random_seed), indent=2) + "\n", encoding="utf-8")
        _make_readable(tmp)
    return output_dir


def _make_readable(path: Path) -> None:
    # mkdtemp/mkstemp create owner-only entries; a model or dataset is meant to be read by
    # others too (e.g. a service running as another user), so use the usual modes.
    path.chmod(0o755 if path.is_dir() else 0o644)
    if path.is_dir():
        for child in path.rglob("*"):
            child.chmod(0o755 if child.is_dir() else 0o644)


def _copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        _make_readable(Path(tmp))
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ensure_workspace_seed(workspace: Path) -> list[Path]:
    """Copy each bundled dataset into ``<workspace>/datasets/`` unless a file of that name is
    already there (user edits are never overwritten). Returns the paths it copied."""
    target = Path(workspace) / "datasets"
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in sorted(DATASETS_DIR.glob("*.jsonl")):
        dst = target / src.name
        if not dst.exists():
            _copy_atomic(src, dst)
            copied.append(dst)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.tiny_model",
        description="Build the embedded tiny chat model and seed the workspace datasets.",
    )
    parser.add_argument("--workspace", type=Path, default=Path("var"), help="workspace to seed (default: var)")
    parser.add_argument("--out", type=Path, help="model folder (default: <workspace>/models/tiny-chat)")
    parser.add_argument("--random-seed", type=int, help="an untrained model, randomly initialised from this seed")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    parser.add_argument("--no-seed-datasets", action="store_true", help="only build the model")
    args = parser.parse_args(argv)

    out = args.out or args.workspace / "models" / MODEL_DIRNAME
    if is_complete(out, random_seed=args.random_seed) and not args.force:
        print(f"tiny model already built: {out}")
    else:
        started = time.perf_counter()
        try:
            build_tiny_model(out, random_seed=args.random_seed, force=args.force)
        except StaleWeights as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"built tiny model in {time.perf_counter() - started:.1f}s: {out}")
    if not args.no_seed_datasets:
        copied = ensure_workspace_seed(args.workspace)
        target = args.workspace / "datasets"
        print(f"seeded {len(copied)} dataset(s) into {target}" if copied else f"datasets already present in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
