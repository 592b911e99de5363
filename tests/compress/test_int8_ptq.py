"""int8 PTQ: a smaller model dir that lorakit loads with the recorded kernel and that stays close to fp32."""
import json

import pytest
import torch

from helpers import logits
from lorakit.cli import main
from lorakit.compress import compress_int8
from lorakit.inference import load_merged, load_trained
from lorakit.quant.int8 import Int8Linear
from lorakit.quant.saved import WEIGHTS_NAME, saved_quantization


@pytest.fixture(scope="module")
def int8_dir(chat_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "m"
    return compress_int8(str(chat_adapter_dir), out, kernel="auto"), out


def test_saved_dir_is_smaller_and_reloads_with_the_chosen_kernel(int8_dir, chat_adapter_dir):
    stats, out = int8_dir
    assert set(stats["kernel_speeds"]) == {"dequant", "fbgemm"}
    assert stats["kernel"] == max(stats["kernel_speeds"], key=stats["kernel_speeds"].get)
    assert stats["layers"] == 2 * 7 and saved_quantization(out)["kernel"] == stats["kernel"]
    assert (out / WEIGHTS_NAME).is_file() and not (out / "model.safetensors").exists()
    trained = load_trained(str(out))
    layers = [m for m in trained.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 14 and {m.kernel for m in layers} == {stats["kernel"]}
    merged = load_merged(str(chat_adapter_dir))
    ids = torch.randint(0, 400, (2, 12))
    reference = logits(merged.model, ids)
    error = (logits(trained.model, ids) - reference).abs().mean()
    assert 0 < error < 0.02 * reference.abs().max()


def test_both_kernels_agree_with_fp32(chat_lm_dir, tmp_path):
    compress_int8(str(chat_lm_dir), tmp_path / "m", kernel="dequant")
    model = load_trained(str(tmp_path / "m")).model
    ids = torch.randint(0, 400, (2, 12))
    reference = logits(load_merged(str(chat_lm_dir)).model, ids)
    exact = logits(model, ids)
    for layer in model.modules():
        if isinstance(layer, Int8Linear):
            layer.use_kernel("fbgemm")
    fast = logits(model, ids)
    assert (exact - reference).abs().mean() < (fast - reference).abs().mean() < 0.02 * reference.abs().max()


def test_plain_transformers_refuses_instead_of_loading_garbage(int8_dir):
    from transformers import AutoModelForCausalLM

    _, out = int8_dir
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(out)


def test_cli_eval_generate_and_gguf_export_accept_the_int8_dir(int8_dir, sft_files, tmp_path, capsys):
    _, out = int8_dir
    assert main(["eval", "--model", str(out), "--data", sft_files[1], "--json", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    assert main(["generate", "--model", str(out), "Lunch with Ana", "--max-new-tokens", "2"]) == 0
    assert main(["export", "gguf", str(out), str(tmp_path / "m.gguf"), "--type", "q8_0"]) == 0


def test_bad_input_is_refused_before_loading(chat_lm_dir, tmp_path, capsys):
    assert main(["compress", "int8", str(chat_lm_dir), str(tmp_path / "o"), "--kernel", "int4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice" in err and "\n" not in err  # argparse errors are one line too
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep")
    assert main(["compress", "int8", str(chat_lm_dir), str(foreign)]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err and (foreign / "todo.txt").exists()


def test_an_adapter_trained_on_an_int8_dir_loads_back(int8_dir, sft_config):
    from lorakit.train.loop import train

    _, out = int8_dir
    result = train(sft_config(f"model.name={out}", "train.steps=1"), quiet=True)
    trained = load_trained(str(result.adapter_dir))
    assert sum(isinstance(m, Int8Linear) for m in trained.model.modules()) == 14
