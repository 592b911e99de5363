import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helpers import tiny_llama
from lorakit.quant import QUANTIZED_LINEARS, Int8Linear, NF4Linear, bytes_per_param, quantize, quantized_bytes


def tiny_llama_64():
    return tiny_llama(hidden_size=64, intermediate_size=128, max_position_embeddings=64)


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(0, 128, (2, 12))


@pytest.mark.parametrize("method", sorted(QUANTIZED_LINEARS))
def test_replaces_linears_but_not_head_or_embeddings(method, ids):
    model = tiny_llama_64()
    with torch.no_grad():
        reference = model(ids).logits
    names = quantize(model, method=method)
    expected = [f"model.layers.{i}.self_attn.{s}" for i in range(2) for s in ATTENTION]
    expected += [f"model.layers.{i}.mlp.{s}" for i in range(2) for s in MLP]
    assert sorted(names) == sorted(expected)
    cls = QUANTIZED_LINEARS[method]
    assert all(isinstance(model.get_submodule(n), cls) for n in names)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.model.embed_tokens, nn.Embedding)
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n in names)
    with torch.no_grad():
        logits = model(ids).logits
    rel = (logits - reference).norm() / reference.norm()
    assert rel < {"nf4": 0.15, "int8": 0.02}[method], rel


def test_skip_matches_exact_names_and_dotted_suffixes():
    model = tiny_llama_64()
    names = quantize(model, skip=["down_proj", "model.layers.0.self_attn.q_proj"])
    assert not any(n.endswith("down_proj") for n in names)
    assert "model.layers.0.self_attn.q_proj" not in names and "model.layers.1.self_attn.q_proj" in names
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    # "proj" is not a dotted suffix of "q_proj": nothing extra is skipped.
    assert len(quantize(tiny_llama_64(), skip=["proj"])) == 14


def test_plain_module_without_output_embeddings():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert quantize(model, method="int8") == ["0", "2"]
    assert isinstance(model[0], Int8Linear)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="int8.*nf4"):
        quantize(tiny_llama_64(), method="fp4")


def test_bytes_per_param():
    model = tiny_llama_64()
    quantize(model)
    nbytes, params = quantized_bytes(model)
    per_layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64  # q, o; k, v (2 kv heads of 16); gate, up, down
    assert params == 2 * per_layer
    assert bytes_per_param(model) <= 0.53
    assert nbytes == sum(m.nbytes() for m in model.modules() if isinstance(m, NF4Linear))


@pytest.mark.parametrize("method", sorted(QUANTIZED_LINEARS))
def test_safetensors_round_trip_into_a_fresh_quantized_skeleton(method, ids, tmp_path):
    model = tiny_llama_64()
    quantize(model, method=method)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    fresh = tiny_llama_64()
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()
    quantize(fresh, method=method)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)
