"""GGUF LoRA export: llama.cpp's adapter layout, read back with gguf.GGUFReader, ΔW rebuilt as llama.cpp applies it."""
import gguf
import pytest

from helpers import make_adapter
from lorakit.export import check_gguf_lora, export_gguf_lora
from lorakit.export.gguf_lora import UnsupportedAdapter
from lorakit.inference import load_trained


def test_layout_and_delta_weights_match(chat_adapter_dir, tmp_path):
    stats = export_gguf_lora(chat_adapter_dir, tmp_path / "a.gguf")
    assert stats["parity_tensors"] == 2 * 7 and stats["parity_max_rel_delta_diff"] < 1e-6
    reader = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 8.0 and meta["general.architecture"] == "llama"
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    assert shapes["blk.0.attn_k.weight.lora_a"] == [64, 4]  # ne = [in, r]: A (r, in) row-major
    assert shapes["blk.0.attn_k.weight.lora_b"] == [4, 32]  # ne = [r, out]: B (out, r)
    assert shapes["blk.1.ffn_down.weight.lora_a"] == [128, 4]


def test_rank_and_alpha_patterns_and_rslora_fold_into_b(chat_lm_dir, tmp_path):
    adapter = make_adapter(chat_lm_dir, tmp_path / "adapter", r=4, lora_alpha=8, use_rslora=True,
                           rank_pattern={"q_proj": 8}, alpha_pattern={"down_proj": 3.0})
    stats = export_gguf_lora(adapter, tmp_path / "a.gguf", gguf_type="f16")
    assert stats["parity_max_rel_delta_diff"] < 2e-3  # f16 factors
    trained = load_trained(adapter)
    assert check_gguf_lora(trained.model, tmp_path / "a.gguf")["tensors"] == 2 * 7


@pytest.mark.parametrize("lora, match", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "lm_head"]}, "ties it to the token embedding"),
])
def test_what_llama_cpp_cannot_hold_is_refused(chat_lm_dir, tmp_path, lora, match):
    adapter = make_adapter(chat_lm_dir, tmp_path / "adapter", **lora)
    with pytest.raises(UnsupportedAdapter, match=match):
        export_gguf_lora(adapter, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
