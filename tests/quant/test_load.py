"""Quantizing while loading: the streamed model equals quantize(full-precision load), bit for bit."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from helpers import tiny_llama_dir
from lorakit.models import load_causal_lm
from lorakit.quant import QUANTIZED_LINEARS, NF4Linear, quantize
from lorakit.quant import nf4
from lorakit.quant.load import (
    CheckpointMismatch, SafetensorsReader, checkpoint_files, load_quantized, parameters_on_meta,
)


def streamed(path, method="nf4", dtype=torch.float32, **options):
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    names = load_quantized(model, checkpoint_files(path), method, **options)
    return model.eval(), names


def quantized_after_load(path, method="nf4", dtype=torch.float32, **options):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return model, quantize(model, method=method, **options)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(0, 128, (2, 9))


@pytest.mark.parametrize("method", sorted(QUANTIZED_LINEARS))
@pytest.mark.parametrize("tie", [False, True])
def test_streamed_load_equals_quantize_after_full_load(method, tie, tmp_path, ids):
    tiny_llama_dir(tmp_path, tie=tie)
    ours, names = streamed(tmp_path, method)
    reference, ref_names = quantized_after_load(tmp_path, method)
    assert names == ref_names and len(names) == 14
    assert all(isinstance(ours.get_submodule(n), QUANTIZED_LINEARS[method]) for n in names)
    assert_same_state(ours, reference)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    assert not any(t.device.type == "meta" for t in [*ours.parameters(), *ours.buffers()])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, reference(ids).logits)


def test_bfloat16_and_skip_options(tmp_path):
    tiny_llama_dir(tmp_path)
    ours, names = streamed(tmp_path, dtype=torch.bfloat16, skip=["down_proj"], double_quant=False, blocksize=32)
    reference, _ = quantized_after_load(tmp_path, dtype=torch.bfloat16, skip=["down_proj"],
                                        double_quant=False, blocksize=32)
    assert not any(n.endswith("down_proj") for n in names)
    assert ours.model.layers[0].self_attn.q_proj.compute_dtype == torch.bfloat16
    assert ours.model.norm.weight.dtype == torch.bfloat16
    assert_same_state(ours, reference)


def test_sharded_checkpoint(tmp_path):
    model = tiny_llama_dir(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(checkpoint_files(tmp_path / "sharded")) > 1
    assert_same_state(streamed(tmp_path / "sharded")[0], streamed(tmp_path / "one")[0])


def test_parameters_on_meta_allocates_no_weights():
    with parameters_on_meta():
        layer = nn.Linear(4096, 4096)
        norm = nn.BatchNorm1d(8)
    assert layer.weight.is_meta and layer.bias.is_meta and norm.weight.is_meta
    assert not norm.running_mean.is_meta  # buffers stay real
    assert not nn.Linear(2, 2).weight.is_meta  # patched only inside the block


def test_reader_matches_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(4, dtype=torch.int8)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    reader = SafetensorsReader(tmp_path / "x.safetensors")
    reference = load_file(tmp_path / "x.safetensors")
    assert sorted(reader.keys()) == ["a", "b", "c"]
    for key in tensors:
        assert reader.read(key).dtype == reference[key].dtype and torch.equal(reader.read(key), reference[key])


def test_renamed_key_raises_before_loading(tmp_path):
    tiny_llama_dir(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.norm.scale"] = state.pop("model.norm.weight")
    save_file(state, tmp_path / "model.safetensors")
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    with pytest.raises(CheckpointMismatch, match="missing.*model.norm.weight.*unexpected.*model.norm.scale"):
        load_quantized(model, checkpoint_files(tmp_path))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)  # nothing was replaced


def test_load_causal_lm_quantization(tmp_path, smol_tokenizer, ids):
    tiny_llama_dir(tmp_path, tokenizer=smol_tokenizer)
    model, tokenizer = load_causal_lm(str(tmp_path), quantization="nf4")
    reference, _ = quantized_after_load(tmp_path)
    assert_same_state(model, reference)
    assert not model.training and tokenizer.pad_token_id is not None
    with pytest.raises(ValueError, match="unknown quantization method"):
        load_causal_lm(str(tmp_path), quantization="fp4")


def test_load_causal_lm_falls_back_to_quantize_after_load(tmp_path, smol_tokenizer):
    tiny_llama_dir(tmp_path, tokenizer=smol_tokenizer)
    state = load_file(tmp_path / "model.safetensors")
    state["extra.tensor"] = torch.zeros(2)  # transformers ignores it; streaming refuses to guess
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="full precision first"):
        model, _ = load_causal_lm(str(tmp_path), quantization="int8")
    reference, _ = quantized_after_load(tmp_path, "int8")
    assert_same_state(model, reference)


def test_chunked_quantization_equals_one_chunk(monkeypatch):
    torch.manual_seed(0)
    weight = torch.randn(48, 80)
    whole = nf4.quantize_nf4(weight)
    monkeypatch.setattr(nf4, "_CHUNK_VALUES", 128)
    chunked = nf4.quantize_nf4(weight)
    assert whole.keys() == chunked.keys()
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)


@pytest.mark.parametrize("method", sorted(QUANTIZED_LINEARS))
def test_set_weight_requantizes_in_place(method):
    torch.manual_seed(0)
    module = QUANTIZED_LINEARS[method].from_weight(torch.randn(16, 64))
    new = torch.randn(16, 64)
    module.set_weight(new)
    torch.testing.assert_close(module.dequantize(), QUANTIZED_LINEARS[method].from_weight(new).dequantize())
    with pytest.raises(ValueError, match="shape"):
        module.set_weight(torch.randn(64, 16))


@pytest.mark.slow
def test_smollm2_streamed_int8_equals_quantize_after_load():
    ours, _ = load_causal_lm(quantization="int8")
    reference, _ = load_causal_lm()
    quantize(reference, method="int8")
    assert_same_state(ours, reference)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


@pytest.mark.gpu
def test_streamed_nf4_model_runs_on_cuda(tmp_path, ids):
    tiny_llama_dir(tmp_path)
    model, _ = streamed(tmp_path)
    with torch.no_grad():
        expected = model(ids).logits
        got = model.to("cuda")(ids.cuda()).logits.cpu()
    assert isinstance(model.model.layers[0].mlp.up_proj, NF4Linear)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
