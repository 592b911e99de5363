"""Fixtures for the server tests: a tiny Llama over SmolLM2's tokenizer, adapters saved to disk
(plain LoRA of several ranks, DoRA, one with modules_to_save, a classifier), and a real uvicorn
server on 127.0.0.1 in a background thread."""
from pathlib import Path

import pytest
import torch

import lorakit
from helpers import randomize_lora_b, save_tiny_lm
from serve_helpers import running
from lorakit.tuners.lora import ModulesToSave

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

PLAIN = {"a": 4, "b": 8, "c": 4, "d": 16}  # name → rank


@pytest.fixture(scope="session")
def serve_base_dir(tmp_path_factory, smol_tokenizer):
    """2-layer, hidden-64 Llama over SmolLM2's vocabulary (SmolLM2's chat template), saved."""
    return save_tiny_lm(tmp_path_factory.mktemp("serve-base"), smol_tokenizer, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512)


def _save(model, out: Path, config, seed: int) -> Path:
    """Inject `config` into `model` with random B (and scaled modules_to_save copies), save it to `out`, remove it."""
    lorakit.inject(model, config, adapter_name="x")
    randomize_lora_b(model, seed=seed, std=0.5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ModulesToSave):
                for copy in module.copies.values():
                    copy.weight.mul_(1.5)
    lorakit.save_adapter(model, out, adapter_name="x")
    lorakit.delete_adapter(model, "x")
    return out


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory, serve_base_dir):
    """Adapters under one directory (the server's --adapter-dir): a..d plain LoRA, `dora` and `saved`
    (modules_to_save on the final norm)."""
    from lorakit.models import load_causal_lm

    root = tmp_path_factory.mktemp("adapters")
    model, _ = load_causal_lm(str(serve_base_dir))
    for i, (name, r) in enumerate(PLAIN.items()):
        _save(model, root / name, lorakit.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"), i)
    _save(model, root / "dora", lorakit.LoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                   target_modules=["q_proj", "v_proj", "down_proj"]), 10)
    _save(model, root / "saved", lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                    modules_to_save=["model.norm"]), 11)
    return root


@pytest.fixture(scope="session")
def reference(serve_base_dir, adapter_root):
    """greedy(model_name, prompt, max_tokens) → `lorakit.inference.generate`'s reply (what
    `lorakit generate` prints), each adapter loaded alone on a fresh base; cached."""
    from lorakit.inference import generate, load_trained

    trained, cache = {}, {}

    def greedy(name: str, prompt, max_tokens: int) -> str:
        key = (name, str(prompt), max_tokens)
        if key not in cache:
            if name not in trained:
                trained[name] = load_trained(serve_base_dir if name == "base" else adapter_root / name)
            cache[key] = generate(trained[name], prompt, max_new_tokens=max_tokens)
        return cache[key]
    return greedy


@pytest.fixture(scope="module")
def server(serve_base_dir, adapter_root):
    """A server over the tiny base with a..d, dora and saved loaded, runtime loads from adapter_root."""
    from lorakit.serve.launch import ServeOptions, build_app

    adapters = {n: str(adapter_root / n) for n in [*PLAIN, "dora", "saved"]}
    app = build_app(ServeOptions(model=str(serve_base_dir), adapters=adapters, adapter_dir=str(adapter_root),
                                 max_batch=16, max_model_len=256))
    with running(app) as url:
        yield url
