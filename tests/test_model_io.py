"""Model directories on disk: atomic writes that transformers loads back, sharding, refusing foreign dirs."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import logits, tiny_llama
from lorakit.model_io import (
    CheckpointMismatch, OutputExistsError, checkpoint_files, load_into, plain_state_dict, save_model_dir,
)
from lorakit.quant.load import parameters_on_meta


def test_saved_dir_loads_in_transformers_with_equal_logits(tmp_path, input_ids):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(back, input_ids), logits(model, input_ids))
    assert not list(tmp_path.glob(".m.*")), "temporary directories left behind"


def test_tied_head_is_saved_once_and_retied(tmp_path, input_ids):
    model = tiny_llama(tie_word_embeddings=True)
    state = plain_state_dict(model)
    assert "lm_head.weight" not in state and "model.embed_tokens.weight" in state
    back = AutoModelForCausalLM.from_pretrained(save_model_dir(model, tmp_path / "m")).eval()
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(back, input_ids), logits(model, input_ids))


def test_shards_and_index_round_trip(tmp_path, input_ids):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m", max_shard_bytes=20_000)
    files = checkpoint_files(out)
    assert len(files) > 1 and (out / "model.safetensors.index.json").is_file()
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(back, input_ids), logits(model, input_ids))


def test_replaces_an_earlier_model_dir_but_not_a_foreign_one(tmp_path):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m")
    (out / "stale.txt").write_text("from the earlier run")
    save_model_dir(model, out, config_update={"lorakit_note": 1})
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["lorakit_note"] == 1
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="refusing to replace"):
        save_model_dir(model, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_failed_write_leaves_the_old_dir(tmp_path):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()
    bad = {"x": object()}  # safetensors cannot write this
    with pytest.raises(Exception):
        save_model_dir(model, out, state=bad)
    assert (out / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".m.*"))


def test_load_into_fills_a_meta_model_and_checks_keys(tmp_path, input_ids):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m")
    with parameters_on_meta():
        empty = tiny_llama()
    load_into(empty, checkpoint_files(out))
    assert torch.equal(logits(empty.eval(), input_ids), logits(model, input_ids))
    with parameters_on_meta():
        other = tiny_llama(num_hidden_layers=3)
    with pytest.raises(CheckpointMismatch, match="missing"):
        load_into(other, checkpoint_files(out))
