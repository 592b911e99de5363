"""Pruning: exact sparsities, structures really removed (smaller model, same function for removed zeros),
iterative steps with LoRA recovery keeping the mask, outputs that transformers and lorakit load."""
import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from helpers import logits, tiny_llama
from lorakit.compress import (
    evenly_spaced_layers, prune_structured, prune_to_dir, prune_unstructured, sparsity_report,
)
from lorakit.compress.structured import linear_parameters
from lorakit.inference import load_trained


def test_per_layer_pruning_hits_the_sparsity_in_every_layer():
    model = tiny_llama()
    report = prune_unstructured(model, 0.5)
    assert all(abs(s - 0.5) < 1e-3 for s in report["per_layer"].values())
    assert "lm_head" not in report["per_layer"] and not hasattr(model.model.layers[0].mlp.up_proj, "weight_orig")


def test_global_pruning_uses_one_threshold():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(10)  # one layer with much larger weights
    report = prune_unstructured(model, 0.5, scope="global")
    assert abs(report["sparsity"] - 0.5) < 1e-3
    assert report["per_layer"]["model.layers.0.mlp.up_proj"] < 0.1 < 0.5 < report["per_layer"]["model.layers.1.mlp.up_proj"]


def test_removing_zeroed_channels_and_heads_keeps_the_function(input_ids):
    """Structures whose weights are zero are the least important; removing them changes nothing."""
    model = tiny_llama(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, num_hidden_layers=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, 1::2] = 0  # half of the MLP channels contribute nothing
            layer.self_attn.o_proj.weight[:, 8:16] = 0  # query head 1 (of group 0) contributes nothing
            layer.self_attn.o_proj.weight[:, 24:32] = 0  # query head 3 (of group 1)
    small = prune_structured(model, mlp=0.5, heads=0.5)
    assert small.config.intermediate_size == 32 and small.config.num_attention_heads == 2
    assert small.config.head_dim == 8 and small.config.num_key_value_heads == 2
    assert linear_parameters(small) < 0.6 * linear_parameters(model)
    assert torch.allclose(logits(small, input_ids), logits(model, input_ids), atol=1e-5)


def test_dropping_layers_and_calibration(input_ids, tmp_path):
    model = tiny_llama(num_hidden_layers=4)
    assert evenly_spaced_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    batches = [{"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}]
    small = prune_structured(model, mlp=0.25, keep_layers=[0, 3], calibration=batches)
    assert small.config.num_hidden_layers == 2 and small.config.intermediate_size == 48
    small.save_pretrained(tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(logits(back, input_ids), logits(small, input_ids))
    out = small.generate(input_ids=input_ids[:1], max_new_tokens=4, do_sample=False)  # cache uses new layer indices
    assert out.shape[1] == input_ids.shape[1] + 4


def test_structured_pruning_of_other_architectures_is_refused(gpt2):
    with pytest.raises(Exception, match="'gpt2' is not supported yet"):
        prune_structured(gpt2, mlp=0.5)


@pytest.fixture
def recover_config(tmp_path, sft_files):
    path = tmp_path / "recover.yaml"
    path.write_text(yaml.safe_dump({
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": sft_files[0], "max_length": 64, "max_tokens": 128},
        "train": {"steps": 2, "lr": 1e-2, "schedule": "constant"},
        "eval": {"generate": False},
    }))
    return str(path)


def test_iterative_unstructured_with_recovery_keeps_the_mask(chat_adapter_dir, tmp_path, recover_config, sft_files):
    rows = []
    report = prune_to_dir(str(chat_adapter_dir), tmp_path / "out", method="unstructured", sparsity=0.6, steps=2,
                          recover=recover_config, eval_data=sft_files[1], max_samples=1, on_step=rows.append)
    assert [(r["step"], r["phase"]) for r in rows] == [
        (0, "source"), (1, "pruned"), (1, "recovered"), (2, "pruned"), (2, "recovered")]
    assert [r["sparsity"] for r in rows] == pytest.approx([0.0, 0.3, 0.3, 0.6, 0.6], abs=2e-3)
    assert all("loss" in r for r in rows) and report["final"] == rows[-1]
    saved = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert saved["steps"] == rows
    reloaded = load_trained(str(tmp_path / "out"))
    assert sparsity_report(reloaded.model)["sparsity"] == pytest.approx(0.6, abs=2e-3)
    assert not list(tmp_path.glob(".out.*")), "step directories left behind"


def test_structured_prune_with_recovery_gives_a_smaller_loadable_model(chat_adapter_dir, tmp_path, recover_config):
    report = prune_to_dir(str(chat_adapter_dir), tmp_path / "out", method="structured", sparsity=0.5, heads=0.5,
                          recover=recover_config, calibration="bundled:quickstart_train")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.intermediate_size == 64 and model.config.num_attention_heads == 2
    assert report["final"]["phase"] == "recovered" and report["final"]["sparsity"] > 0.4


def test_bad_prune_options_fail_before_loading(chat_adapter_dir, tmp_path):
    with pytest.raises(Exception, match="--heads and --keep-layers"):
        prune_to_dir(str(chat_adapter_dir), tmp_path / "o", method="unstructured", heads=0.5)
    with pytest.raises(Exception, match="run config file not found"):
        prune_to_dir(str(chat_adapter_dir), tmp_path / "o", recover=str(tmp_path / "none.yaml"))
