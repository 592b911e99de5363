"""QLoRA from the run config: NF4 base loaded layer by layer, gradient checkpointing, merge-out."""
import math

import torch
from transformers import AutoModelForCausalLM

from lorakit import load_adapter
from lorakit.io import read_base_quantization
from lorakit.merge import merge_adapter_to_dir
from lorakit.quant import NF4Linear
from lorakit.train.loop import train
from lorakit.train.prepare import load_model, prepare
from lorakit.tuners.lora import LoraWrapper

QLORA = ("model.quantization=nf4", "model.gradient_checkpointing=true")


def test_prepare_builds_an_nf4_base_with_checkpointing(sft_config):
    run = prepare(sft_config(*QLORA))
    q = run.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoraWrapper) and isinstance(q.base, NF4Linear)
    assert run.model.is_gradient_checkpointing
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters." in n for n in trainable)


def test_qlora_trains_end_to_end_and_merges_out(sft_config, tmp_path):
    config = sft_config(*QLORA, "train.steps=6")
    result = train(config, quiet=True)
    assert len(result.losses) == 6 and all(math.isfinite(l) for l in result.losses)
    assert result.losses[-1] < result.losses[0]
    assert result.final_eval is not None and math.isfinite(result.final_eval.loss)
    assert read_base_quantization(result.adapter_dir)["method"] == "nf4"

    stats = merge_adapter_to_dir(result.adapter_dir, tmp_path / "merged", requantize="nf4")
    assert stats["base_quantization"] == "nf4" and stats["merged_layers"] == 7
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    model, _ = load_model(config)  # the function trained: the NF4 base plus the saved adapter
    load_adapter(model, result.adapter_dir)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model.eval()(ids).logits, atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(sft_config):
    grads = []
    for checkpointing in ("false", "true"):
        run = prepare(sft_config("model.quantization=nf4", f"model.gradient_checkpointing={checkpointing}"))
        run.model.train()
        batch = next(iter(run.train_batches))
        run.loss_sum(run.model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)
