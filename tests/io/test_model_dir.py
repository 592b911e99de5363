"""Model directories written from memory: transformers loads them back, tied heads, shards, atomic replace,
filling a meta-device model, output-path checks."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import logits, tiny_llama
from lorakit.io.model_dir import plain_state_dict, save_model_dir
from lorakit.io.shards import CheckpointMismatch, OutputExistsError, check_output_file, checkpoint_files
from lorakit.quant.load import load_into, parameters_on_meta


def test_saved_dir_loads_in_transformers_with_equal_logits(tmp_path, input_ids):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(back, input_ids), logits(model, input_ids))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not list(tmp_path.glob(".m.*")), "staging directories left behind"


def test_tied_head_is_saved_once_and_retied(tmp_path, input_ids):
    model = tiny_llama(tie_word_embeddings=True)
    state = plain_state_dict(model)
    assert "lm_head.weight" not in state and "model.embed_tokens.weight" in state
    back = AutoModelForCausalLM.from_pretrained(save_model_dir(model, tmp_path / "m")).eval()
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(back, input_ids), logits(model, input_ids))


def test_shards_under_another_name_round_trip(tmp_path, input_ids):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m", max_shard_bytes=20_000, weights_name="model-x.safetensors",
                         config_update={"note": 1}, extra_files={"report.json": "{}"})
    files = checkpoint_files(out, "model-x.safetensors")
    assert len(files) > 1 and (out / "model-x.safetensors.index.json").is_file() and not checkpoint_files(out)
    assert json.loads((out / "config.json").read_text())["note"] == 1 and (out / "report.json").is_file()
    with parameters_on_meta():
        empty = tiny_llama()
    load_into(empty, files)
    assert torch.equal(logits(empty.eval(), input_ids), logits(model, input_ids))


def test_failed_write_leaves_the_old_dir(tmp_path):
    model = tiny_llama()
    out = save_model_dir(model, tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(Exception):
        save_model_dir(model, out, state={"x": object()})
    assert (out / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".m.*"))


def test_load_into_checks_keys_before_reading(tmp_path):
    out = save_model_dir(tiny_llama(), tmp_path / "m")
    with parameters_on_meta():
        other = tiny_llama(num_hidden_layers=3)
    with pytest.raises(CheckpointMismatch, match="missing"):
        load_into(other, checkpoint_files(out))


def test_output_file_checks(tmp_path):
    (tmp_path / "f.gguf").write_text("x")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        check_output_file(tmp_path / "f.gguf", overwrite=False)
    assert check_output_file(tmp_path / "f.gguf", overwrite=True) == tmp_path / "f.gguf"
    with pytest.raises(OutputExistsError, match="is a directory"):
        check_output_file(tmp_path, overwrite=True)
    with pytest.raises(OutputExistsError, match="is not a directory"):
        check_output_file(tmp_path / "f.gguf" / "x.gguf", overwrite=True)
