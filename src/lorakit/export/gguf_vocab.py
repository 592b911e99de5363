"""A Hugging Face byte-level BPE tokenizer as GGUF `tokenizer.ggml.*` metadata (what llama.cpp reads).

llama.cpp does not run the tokenizer.json: it rebuilds the tokenizer from the token list, the merges,
the token types and a *pre-tokenizer name* that selects its own hard-coded splitting regexes. The
name is derived here from the tokenizer's actual pre-tokenizer, so llama.cpp splits text the way
the model was trained to see it:

    ByteLevel(use_regex=True)                        -> "gpt-2"   (GPT-2's split)
    Digits(individual) then ByteLevel(use_regex)     -> "smollm"  (each digit alone, then GPT-2's split)

Anything else (SentencePiece vocabularies, custom split regexes) is "not supported yet" rather than
a file that tokenizes differently in llama.cpp than in transformers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from gguf import TokenType

from ..errors import InputError


class UnsupportedTokenizer(InputError):
    """The tokenizer cannot be described in GGUF metadata that llama.cpp reads the same way."""


@dataclass
class GgufVocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # "bos" / "eos" / "unk" / "pad" -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def gguf_vocab(tokenizer, vocab_size: int) -> GgufVocab:
    """Describe `tokenizer` for a model whose embedding has `vocab_size` rows (ids the tokenizer
    never produces become unused placeholder tokens, so llama.cpp's vocabulary matches the model)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__}: GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedTokenizer(
            f"tokenizer model {model.get('type')!r}{' with byte fallback' if model.get('byte_fallback') else ''}: "
            "GGUF export supports byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3 style) only, not yet SentencePiece")
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))

    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedTokenizer(f"tokenizer has ids up to {max(vocab.values())} but the model's vocabulary is {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for text, index in vocab.items():
        tokens[index], types[index] = text, int(TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        types[added["id"]] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special = {}
    for key in ("bos", "eos", "unk", "pad"):
        index = getattr(tokenizer, f"{key}_token_id", None)
        if index is not None:
            special[key] = int(index)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    add_bos = "bos" in special and len(probe) > len(plain) and probe[0] == special["bos"]
    add_eos = "eos" in special and len(probe) > len(plain) and probe[-1] == special["eos"]
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
    return GgufVocab("gpt2", pre, tokens, types, merges, special, add_bos, add_eos, template)


def write_vocab(writer, vocab: GgufVocab) -> None:
    """Add the vocabulary to a `gguf.GGUFWriter`."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for key, index in vocab.special_ids.items():
        setters[key](index)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _pre_tokenizer_name(pre: dict | None) -> str:
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if steps and kinds[-1] == "ByteLevel" else None
    if byte_level is not None and byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space"):
        if len(steps) == 1:
            return "gpt-2"
        if len(steps) == 2 and kinds[0] == "Digits" and steps[0].get("individual_digits"):
            return "smollm"
    raise UnsupportedTokenizer(f"pre-tokenizer {json.dumps(pre)[:200]}: no llama.cpp pre-tokenizer is known to "
                               "split text the same way; GGUF export is not supported for it yet")
