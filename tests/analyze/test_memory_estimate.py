"""The memory estimator against hand-computed numbers and against what a tiny Llama really allocates."""
import json

import pytest
import torch

from helpers import tiny_llama
from lorakit import LoraConfig, inject, trainable_parameters
from lorakit.analyze.memory import (ALL_LINEAR, Device, Dtype, Method, Moment, Role, ShapeError, estimate_memory,
                                    layer_tensors, load_shape, nf4_bytes, shape_from_config)
from lorakit.train.losses import causal_lm_loss_sum

TINY = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}


def shape():
    return shape_from_config(TINY, "tiny")


def test_layer_tensors_match_hand_counts_for_lora_fp32():
    # d=64, q=64, k=32 (2 kv heads × 16), i=176, h=4, r=4; fp32 → ×4 bytes per value
    saved = 6 * 64 + 2 * 32 + 4 * 176 + 7 * 4 + 4 + 2  # norms' inputs, q/k after RoPE, v, SDPA out, MLP, LoRA, lse, 1/rms
    temporary = 13.5 * 64 + 6.5 * 32 + 2 * 176 + 7 * 4 + 4
    per = layer_tensors(shape(), Method.LORA, r=4, b=4)
    assert per.saved == 4 * saved == 4744
    assert per.temporary == 4 * temporary == 5824


def test_weights_gradients_optimizer_match_hand_counts():
    s = shape()
    linear = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 176 * 3  # q, o; k, v; gate, up, down
    params = 2 * 128 * 64 + 2 * (linear + 2 * 64) + 64
    assert s.parameters() == params
    adapter = 2 * 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 176) * 3)
    lora = estimate_memory(s, Method.LORA, r=4, batch_tokens=100)
    assert (lora.weights, lora.adapter, lora.gradients, lora.optimizer_states) == (4 * params, 4 * adapter,
                                                                                    4 * adapter, 8 * adapter)
    full = estimate_memory(s, Method.FULL, batch_tokens=100, dtype=Dtype.BFLOAT16)
    assert (full.weights, full.gradients, full.optimizer_states) == (2 * params, 2 * params, 4 * params)
    qlora = estimate_memory(s, Method.QLORA, r=4, batch_tokens=100)
    nf4 = 2 * sum(nf4_bytes(a * o) for a, o in s.linear_shapes().values())
    assert qlora.weights == 4 * (params - 2 * linear) + nf4


def test_nf4_bytes_equal_the_quantized_layer_buffers():
    from lorakit.quant.nf4 import NF4Linear

    for n_in, n_out in ((64, 176), (576, 1536), (4096, 11008)):
        layer = NF4Linear(n_in, n_out, bias=False, device="meta")
        stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
        assert nf4_bytes(n_in * n_out) == stored


def _saved_activation_bytes(model, batch) -> int:
    """Bytes autograd saves for the backward (unique storages), parameters and buffers excluded."""
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known and t.is_floating_point() or t.dtype == torch.bool:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss_sum(model, batch)
    return sum(seen.values())


@pytest.mark.parametrize("method,targets,dropout,dtype", [
    (Method.LORA, ALL_LINEAR, 0.0, Dtype.FLOAT32),
    (Method.LORA, frozenset({Role.Q, Role.V}), 0.0, Dtype.FLOAT32),
    (Method.LORA, ALL_LINEAR, 0.1, Dtype.FLOAT32),
    (Method.QLORA, ALL_LINEAR, 0.0, Dtype.FLOAT32),
    (Method.FULL, ALL_LINEAR, 0.0, Dtype.FLOAT32),
    (Method.LORA, ALL_LINEAR, 0.0, Dtype.BFLOAT16),
    (Method.FULL, ALL_LINEAR, 0.0, Dtype.BFLOAT16),
])
def test_saved_activations_equal_what_autograd_saves(method, targets, dropout, dtype):
    model = tiny_llama(**{k: v for k, v in TINY.items() if k != "model_type"})
    if dtype is Dtype.BFLOAT16:
        model.to(torch.bfloat16)
    if method is Method.QLORA:
        from lorakit.quant import quantize

        quantize(model, method="nf4")
    if method is Method.FULL:
        model.requires_grad_(True)
    else:
        inject(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                 target_modules=sorted(t.value for t in targets)))
    model.train()
    ids = torch.randint(0, 128, (2, 24))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    measured = _saved_activation_bytes(model, batch)
    est = estimate_memory(shape(), method, r=4, batch_tokens=ids.numel(), targets=targets, lora_dropout=dropout,
                          dtype=dtype)
    # per-position tensors (RoPE's cos/sin) and index tensors are not per token: a few percent at this size
    assert est.activations == pytest.approx(measured, rel=0.05)


def test_adapter_size_equals_injected_parameters():
    model = tiny_llama(**{k: v for k, v in TINY.items() if k != "model_type"})
    inject(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable, _ = trainable_parameters(model)
    est = estimate_memory(shape(), Method.LORA, r=4, batch_tokens=10)
    assert est.trainable == trainable and est.adapter == 4 * trainable


def test_checkpointing_keeps_one_input_per_layer_plus_one_recomputed_layer():
    s = shape()
    per = layer_tensors(s, Method.LORA, r=4, b=4)
    n = 1000
    on = estimate_memory(s, Method.LORA, r=4, batch_tokens=n, gradient_checkpointing=True)
    off = estimate_memory(s, Method.LORA, r=4, batch_tokens=n)
    final_norm = (4 * 64 + 4) * n
    assert on.activations == s.layers * 4 * 64 * n + (per.saved + per.temporary) * n + final_norm
    assert off.activations == s.layers * per.saved * n + final_norm
    assert off.retained == s.layers * per.temporary * n
    assert on.retained == s.layers * 3 * 176 * 4 * n


def test_peak_is_the_larger_moment_and_cuda_drops_the_allocator_term():
    s = load_shape("llama-2-7b")
    lora = estimate_memory(s, Method.LORA, batch_tokens=2048)
    assert lora.moment is Moment.FORWARD_END and lora.total == lora.forward_end() > lora.optimizer_step()
    full = estimate_memory(s, Method.FULL, batch_tokens=512, gradient_checkpointing=True)
    assert full.moment is Moment.OPTIMIZER_STEP and full.total == full.optimizer_step()
    assert estimate_memory(s, Method.LORA, batch_tokens=2048, device=Device.CUDA).retained == 0
    json.dumps(lora.to_dict())  # serialisable for --json


def test_bundled_shapes_have_the_published_parameter_counts():
    counts = {name: load_shape(name).parameters() for name in ("llama-2-7b", "llama-2-13b", "llama-2-70b")}
    assert counts == {"llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192}


def test_load_shape_reads_a_config_file_and_a_model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert load_shape(str(tmp_path / "config.json")) == shape_from_config(TINY, str(tmp_path / "config.json"))
    assert load_shape(str(tmp_path)).hidden == 64


def test_a_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({**TINY, "hidden_size": "wide"}))
    with pytest.raises(ShapeError, match="hidden_size"):
        load_shape(str(bad))


def test_strings_from_python_callers_are_parsed():
    s = shape()
    by_enum = estimate_memory(s, Method.LORA, r=4, batch_tokens=64, targets=frozenset({Role.Q, Role.V}))
    by_text = estimate_memory(s, "lora", r=4, batch_tokens=64, targets={"q_proj", "v_proj"})
    assert by_text.total == by_enum.total and by_text.adapter == by_enum.adapter
    with pytest.raises(ShapeError, match="c_attn"):
        estimate_memory(s, "lora", targets={"c_attn"})
