"""LoRA extraction: merge a known LoRA into a base, extract it again, get the same model back."""
import pytest
import torch

import lorakit
from helpers import logits, peft_from_pretrained, randomize_lora_b, tiny_gpt2, tiny_llama
from lorakit.cli import main
from lorakit.errors import InputError


def _merged_pair(tmp_path, factory=tiny_llama, config=None, edit=None, **overrides):
    """(base dir, tuned dir, logits function of the tuned model): tuned = base + a random LoRA, merged."""
    base = factory(**overrides)
    base.save_pretrained(tmp_path / "base")
    tuned = factory(**overrides)
    lorakit.inject(tuned, config or lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    randomize_lora_b(tuned)
    tuned = lorakit.merge_and_unload(tuned)
    if edit is not None:
        edit(tuned)
    tuned.save_pretrained(tmp_path / "tuned")
    return str(tmp_path / "base"), str(tmp_path / "tuned"), tuned


def test_extraction_at_the_true_rank_recovers_the_model(tmp_path, input_ids):
    base, tuned_dir, tuned = _merged_pair(tmp_path)
    result = lorakit.extract_lora(base, tuned_dir, tmp_path / "adapter", rank=6)
    assert {r for r, _ in result.layers.values()} == {6} and len(result.layers) == 14
    assert result.kept_energy > 1 - 1e-6 and not result.modules_to_save and not result.dropped
    ours = tiny_llama()
    lorakit.load_adapter(ours, tmp_path / "adapter")
    torch.testing.assert_close(logits(ours, input_ids), logits(tuned, input_ids), atol=1e-4, rtol=1e-4)
    theirs = peft_from_pretrained(tiny_llama(), tmp_path / "adapter")
    torch.testing.assert_close(logits(theirs, input_ids), logits(tuned, input_ids), atol=1e-4, rtol=1e-4)


def test_energy_picks_per_layer_ranks(tmp_path):
    base, tuned, _ = _merged_pair(tmp_path)
    result = lorakit.extract_lora(base, tuned, tmp_path / "energy", energy=0.9)
    assert all(1 <= r <= 4 and kept >= 0.9 for r, kept in result.layers.values())
    assert len({r for r, _ in result.layers.values()}) > 1  # written through rank_pattern
    config = lorakit.read_config(tmp_path / "energy")
    assert config.rank_pattern and all(config.rank_for(m) == r for m, (r, _) in result.layers.items())
    capped = lorakit.extract_lora(base, tuned, tmp_path / "capped", energy=0.9999, rank=2)
    assert {r for r, _ in capped.layers.values()} == {2} and capped.kept_energy < 0.9999


def test_changed_norms_and_embeddings_are_saved_or_dropped(tmp_path, input_ids):
    def edit(model):
        with torch.no_grad():
            model.model.norm.weight.add_(0.5)
            model.model.embed_tokens.weight.mul_(1.5)

    base, tuned_dir, tuned = _merged_pair(tmp_path, edit=edit)
    result = lorakit.extract_lora(base, tuned_dir, tmp_path / "saved", rank=4)
    assert result.modules_to_save == ["model.embed_tokens", "model.norm"]
    theirs = peft_from_pretrained(tiny_llama(), tmp_path / "saved")
    torch.testing.assert_close(logits(theirs, input_ids), logits(tuned, input_ids), atol=1e-4, rtol=1e-4)
    dropped = lorakit.extract_lora(base, tuned_dir, tmp_path / "dropped", rank=4, keep_other=False)
    assert set(dropped.dropped) == {"model.norm.weight", "model.embed_tokens.weight"}


def test_tied_embedding_is_reported_dropped(tmp_path):
    def edit(model):
        with torch.no_grad():
            model.model.embed_tokens.weight.add_(0.1)

    base, tuned, _ = _merged_pair(tmp_path, edit=edit, tie_word_embeddings=True)
    result = lorakit.extract_lora(base, tuned, tmp_path / "adapter", rank=4)
    assert "tied" in result.dropped["model.embed_tokens.weight"]


def test_conv1d_layers_and_changed_biases(tmp_path, input_ids):
    """GPT-2 stores W as (in, out); a changed bias of a LoRA layer travels as peft's bias='lora_only'."""
    def edit(model):
        with torch.no_grad():
            model.transformer.h[0].attn.c_attn.bias.add_(0.3)

    config = lorakit.LoraConfig(r=4, target_modules=["c_attn", "c_fc"])
    base, tuned_dir, tuned = _merged_pair(tmp_path, factory=tiny_gpt2, config=config, edit=edit)
    result = lorakit.extract_lora(base, tuned_dir, tmp_path / "adapter", rank=4)
    assert result.biases == ["transformer.h.0.attn.c_attn"]
    assert lorakit.read_config(tmp_path / "adapter").bias == "lora_only"
    theirs = peft_from_pretrained(tiny_gpt2(), tmp_path / "adapter")
    torch.testing.assert_close(logits(theirs, input_ids), logits(tuned, input_ids), atol=1e-4, rtol=1e-4)


def test_cli_prints_kept_energy_per_layer(tmp_path, capsys):
    base, tuned, _ = _merged_pair(tmp_path)
    assert main(["extract", "--base", base, "--tuned", tuned, "--energy", "0.95", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out and "keeps" in out and "%" in out
    assert main(["extract", "--base", base, "--tuned", base, "--rank", "4", str(tmp_path / "same")]) == 2
    assert "no linear layer differs" in capsys.readouterr().err
    assert main(["extract", "--base", base, "--tuned", tuned, str(tmp_path / "none")]) == 2
    assert "give rank and/or energy" in capsys.readouterr().err
    assert not (tmp_path / "same").exists() and not (tmp_path / "none").exists()


def test_mismatched_models_are_refused(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "a")
    tiny_llama(intermediate_size=48).save_pretrained(tmp_path / "b")
    with pytest.raises(InputError, match="down_proj.weight: --base has shape"):
        lorakit.extract_lora(str(tmp_path / "a"), str(tmp_path / "b"), tmp_path / "out", rank=2)


def test_large_matrices_use_a_randomized_svd_that_recovers_low_rank_updates():
    from lorakit.merge.extract import RANDOMIZED_MIN_SIDE, _low_rank

    g = torch.Generator().manual_seed(0)
    side = RANDOMIZED_MIN_SIDE + 100
    delta = torch.randn(side, 8, generator=g) @ torch.randn(8, side + 50, generator=g)
    a, b, k, kept = _low_rank(delta, rank=12, energy=None, niter=2)
    assert k == 12 and kept > 1 - 1e-6
    torch.testing.assert_close(b @ a, delta, atol=1e-3, rtol=1e-4)
    _, _, k, kept = _low_rank(delta, rank=12, energy=0.99, niter=2)
    assert k <= 8 and kept >= 0.99
