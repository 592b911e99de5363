"""GGUF export: transformers' GGUF reader gives back the merged model's logits and the same tokenizer."""
import gguf
import pytest

from helpers import chat_llama, train_bpe
from lorakit.export import GGUF_TYPES, UnsupportedArchitecture, check_gguf, export_gguf, write_gguf
from lorakit.export.gguf_vocab import UnsupportedTokenizer, gguf_vocab
from lorakit.inference import load_merged


def fields(path):
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


def test_f32_export_of_an_adapter_matches_the_merged_model(chat_adapter_dir, tmp_path):
    stats = export_gguf(str(chat_adapter_dir), tmp_path / "m.gguf")
    assert stats["parity_max_abs_logit_diff"] <= 1e-5
    assert stats["parity_tokenizer_equal"] and stats["parity_top1_agreement"] == 1.0
    meta = fields(tmp_path / "m.gguf")
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.chat_template"].startswith("{% for message")
    assert meta["llama.attention.head_count_kv"] == 2 and meta["llama.rope.freq_base"] == 100000.0
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}  # tied head


def test_f16_and_q8_0_are_smaller_and_report_their_error(chat_lm_dir, tmp_path):
    merged = load_merged(str(chat_lm_dir))
    sizes = {"f32": write_gguf(merged.model, merged.tokenizer, tmp_path / "f32.gguf").stat().st_size}
    parity = {}
    for kind in ("f16", "q8_0"):
        path = write_gguf(merged.model, merged.tokenizer, tmp_path / f"{kind}.gguf", kind)
        sizes[kind] = path.stat().st_size
        parity[kind] = check_gguf(merged.model, merged.tokenizer, path)
        assert 0 < parity[kind].mean_abs_logit_diff < 0.02 * parity[kind].logit_scale
        assert parity[kind].tokenizer_equal and parity[kind].top1_agreement >= 0.9
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
        assert types["blk.0.attn_q.weight"] == kind.upper() and types["blk.0.attn_norm.weight"] == "F32"
    assert parity["f16"].max_abs_logit_diff < parity["q8_0"].max_abs_logit_diff
    assert sizes["q8_0"] < 0.6 * sizes["f16"] < 0.6 * sizes["f32"]


def test_untied_head_and_narrow_heads_read_back_exactly(bpe_tokenizer, tmp_path):
    """head_dim · heads != hidden (as after head pruning): key_length/value_length and head_dim carry it."""
    model = chat_llama(bpe_tokenizer, tie=False, num_attention_heads=4, head_dim=8)
    path = write_gguf(model, bpe_tokenizer, tmp_path / "m.gguf")
    assert check_gguf(model, bpe_tokenizer, path).max_abs_logit_diff <= 1e-5
    assert fields(path)["llama.attention.key_length"] == 8
    assert "output.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}


def test_other_architectures_and_types_are_refused(gpt2, tmp_path, bpe_tokenizer, chat_lm_dir):
    with pytest.raises(UnsupportedArchitecture, match="'gpt2'.*not supported yet"):
        write_gguf(gpt2, bpe_tokenizer, tmp_path / "x.gguf")
    with pytest.raises(Exception, match="expected one of f32, f16, q8_0"):
        export_gguf(str(chat_lm_dir), tmp_path / "x.gguf", gguf_type="q4_k")
    assert not (tmp_path / "x.gguf").exists() and set(GGUF_TYPES) == {"f32", "f16", "q8_0"}


def test_pre_tokenizer_name_follows_the_tokenizer():
    assert gguf_vocab(train_bpe(digits=True), 400).pre == "smollm"
    from tokenizers import pre_tokenizers

    odd = train_bpe()
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UnsupportedTokenizer, match="pre-tokenizer"):
        gguf_vocab(odd, 400)
