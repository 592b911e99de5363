"""`train.compile` (train/compiled.py): the layers compiled for the training steps train exactly what eager
mode trains, evaluation and generation run eager, the layers are eager again afterwards, and a machine
that cannot compile is told so before anything is written."""
import pytest
import torch
from safetensors.torch import load_file

from lorakit.train import compiled
from lorakit.train.loop import train
from lorakit.train.prepare import prepare
from lorakit.targets import layer_list


def test_compiled_layers_train_what_eager_layers_train(sft_config, tmp_path):
    eager = sft_config("train.steps=3", "eval.generate=true", f"output_dir={tmp_path / 'eager'}")
    fast = sft_config("train.steps=3", "eval.generate=true", "train.compile=true", f"output_dir={tmp_path / 'fast'}")
    want = train(eager, quiet=True)
    run = prepare(fast)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    got = train(fast, run=run, quiet=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the steps did run compiled
    assert got.losses == pytest.approx(want.losses, rel=1e-4)
    assert got.final_eval.loss == pytest.approx(want.final_eval.loss, rel=1e-4)
    assert got.final_eval.exact_match == want.final_eval.exact_match  # generated (eager) after compiled steps
    a, b = load_file(want.adapter_dir / "adapter_model.safetensors"), load_file(got.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()  # the same module paths: compiled in place, no wrapper module
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    _, layers = layer_list(run.model)
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager again after training


def test_no_cxx_compiler_is_a_one_line_error_before_anything_is_written(sft_config, monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    config = sft_config("train.compile=true")
    with pytest.raises(compiled.CompileError, match="train.compile: inductor needs a C\\+\\+ compiler") as e:
        train(config, quiet=True)
    assert "\n" not in str(e.value)
    assert not config.out.exists()


def test_a_model_without_a_layer_list_cannot_be_compiled():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(compiled.CompileError, match="train.compile: Sequential: no list of transformer layers"):
        compiled.check_compilable(model, torch.device("cpu"))
