"""ONNX export: onnxruntime gives the PyTorch logits, the same greedy tokens, the same labels."""
import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from lorakit.export import OnnxModel, check_onnx, export_onnx, write_onnx  # noqa: E402
from lorakit.export.onnx_runtime import MANIFEST  # noqa: E402
from lorakit.inference import load_merged  # noqa: E402


@pytest.fixture(scope="module")
def onnx_lm(chat_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "lm"
    return export_onnx(str(chat_adapter_dir), out), out


def test_causal_lm_with_cache_matches_pytorch(onnx_lm):
    stats, out = onnx_lm
    assert stats["parity_max_abs_logit_diff"] <= 1e-4
    assert stats["parity_greedy_equal"] == 1.0 and stats["parity_greedy_tokens"] == 8
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["task"] == "causal-lm" and manifest["layers"] == 2 and manifest["kv_heads"] == 2
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_batched_decoding_with_left_padding_equals_one_by_one(onnx_lm, chat_adapter_dir):
    _, out = onnx_lm
    onnx = OnnxModel(out)
    tokenizer = onnx.tokenizer()
    prompts = [tokenizer("Lunch with Ana")["input_ids"], tokenizer("Call Bo at noon on Friday, please")["input_ids"]]
    together = onnx.generate(prompts, 6, stop_ids=[], pad_id=tokenizer.pad_token_id)
    alone = [onnx.generate([p], 6, stop_ids=[], pad_id=tokenizer.pad_token_id)[0] for p in prompts]
    assert together == alone and all(len(t) == 6 for t in together)


def test_classifier_gives_identical_labels(tiny_encoder_dir, tmp_path):
    from lorakit.data.bundled import path as bundled_path
    from lorakit.models import load_classifier
    from lorakit.io.model_dir import save_model_dir

    model, tokenizer = load_classifier(str(tiny_encoder_dir), labels=["a", "b", "c"])
    save_model_dir(model, tmp_path / "clf", tokenizer)
    merged = load_merged(str(tmp_path / "clf"))
    assert merged.task == "classification"
    write_onnx(merged.model, merged.tokenizer, tmp_path / "onnx", merged.task)
    texts = [json.loads(line)["text"] for line in bundled_path("classify_eval").read_text().splitlines()]
    parity = check_onnx(merged.model, merged.tokenizer, OnnxModel(tmp_path / "onnx"), texts=texts)
    assert parity.labels_equal == 1.0 and parity.max_abs_logit_diff <= 1e-4
    assert json.loads((tmp_path / "onnx" / MANIFEST).read_text())["labels"] == ["a", "b", "c"]


def test_over_the_limit_the_float64_model_decides(onnx_lm, chat_adapter_dir):
    _, out = onnx_lm
    merged = load_merged(str(chat_adapter_dir))
    exact = check_onnx(merged.model, merged.tokenizer, OnnxModel(out), limit=0.0)  # every diff is "over"
    assert exact.max_abs_logit_diff > 0.0  # fp32 onnxruntime and fp32 PyTorch do round differently here
    assert 0.0 < exact.onnx_vs_float64 <= 1e-4 and 0.0 < exact.torch_vs_float64 <= 1e-4
    assert exact.passed(limit=1e-4) and not exact.passed(limit=exact.onnx_vs_float64 / 2)
    within = check_onnx(merged.model, merged.tokenizer, OnnxModel(out))
    assert within.onnx_vs_float64 is None and within.passed()  # under the limit: no float64 copy is made
    assert not replace(within, greedy_equal=0.5).passed()


def test_not_an_export_dir_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="onnx_export.json: not found"):
        OnnxModel(tmp_path)
    assert np  # numpy is what OnnxModel speaks
