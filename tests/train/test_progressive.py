"""Progressive LoRA: earlier adapters applied frozen under a new one (several adapters active together),
O-LoRA's orthogonality penalty, and the stack at inference (`lorakit generate --adapter A --adapter B`)."""
import json
import shutil

import pytest
import torch

import lorakit
from helpers import randomize_lora_b, tiny_llama
from lorakit.cli import main
from lorakit.inference import load_trained
from lorakit.errors import InputError
from lorakit.io import STACK_NAME, read_weights
from lorakit.models import load_causal_lm
from lorakit.serve.registry import Registry
from lorakit.train.loop import train
from lorakit.train.prepare import prepare
from lorakit.tuners.layers import LayerWrapper
from lorakit.tuners.lora import OrthogonalityPenalty, orthogonal_pairs


def two_adapters():
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), "a")
    lorakit.inject(model, lorakit.LoraConfig(r=2, lora_alpha=2, target_modules=["v_proj", "o_proj"]), "b")
    randomize_lora_b(model)
    return model


def test_stacked_adapters_add_both_updates_to_the_base():
    model = two_adapters()
    lorakit.set_adapter(model, ["a", "b"])
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    for name, w in model.named_modules():
        if isinstance(w, LayerWrapper):
            expected = w.base(x) + sum(w.adapters[n].update(x) for n in ("a", "b") if n in w.adapters)
            torch.testing.assert_close(w(x), expected)
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        stacked = model(input_ids=ids).logits
        lorakit.merge(model)  # both folded into the base, then back out
        merged = model(input_ids=ids).logits
        lorakit.unmerge(model)
        again = model(input_ids=ids).logits
    torch.testing.assert_close(merged, stacked, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, stacked, atol=1e-5, rtol=1e-4)
    with lorakit.disable_adapters(model), torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, stacked)
    assert lorakit.active_adapter(model) == ("a", "b")


def test_deleting_a_stacked_adapter_keeps_the_rest_active():
    model = two_adapters()
    lorakit.set_adapter(model, ["a", "b"])
    lorakit.delete_adapter(model, "b")
    assert lorakit.active_adapter(model) == "a"


def test_orthogonality_penalty_is_the_formula():
    model = two_adapters()
    pairs = orthogonal_pairs(model, "b")
    assert len(pairs) == 2  # a and b share v_proj, in each of the 2 layers
    expected = 0.0
    for name, w in model.named_modules():
        if isinstance(w, LayerWrapper) and "a" in w.adapters and "b" in w.adapters:
            expected += float(((w.adapters["b"].lora_A @ w.adapters["a"].lora_A.T) ** 2).sum().detach())
    term = OrthogonalityPenalty(pairs, 0.5)
    torch.testing.assert_close(float(term.regularizer(model).detach()), 0.5 * expected)
    assert term.metrics() == {"orthogonal_penalty": pytest.approx(0.5 * expected)}


@pytest.fixture(scope="module")
def earlier_adapter(tmp_path_factory, tiny_lm_dir):
    """A LoRA adapter for the tiny LM on q_proj / v_proj with random (non-zero) B."""
    model, _ = load_causal_lm(str(tiny_lm_dir))
    lorakit.inject(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    randomize_lora_b(model, std=0.5)
    return lorakit.save_adapter(model, tmp_path_factory.mktemp("earlier") / "adapter",
                                base_model_name_or_path=str(tiny_lm_dir))


def test_progressive_run_trains_only_the_new_adapter_on_top(sft_config, earlier_adapter, tiny_lm_dir):
    config = sft_config(f"lora.progressive_from=[{earlier_adapter}]", "lora.orthogonal_lambda=0.1",
                        "train.steps=3", "data.eval=null")
    run = prepare(config)
    model = run.model
    assert lorakit.active_adapter(model) == ("progressive_0", "default")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    result = train(config, run=run, quiet=True)

    saved_before = read_weights(earlier_adapter)
    earlier_live = {k: t for k, t in lorakit.io.adapter_tensors(model, "progressive_0").items()}
    for k, t in earlier_live.items():  # frozen: unchanged by training
        torch.testing.assert_close(t.detach(), saved_before[k])
    new = read_weights(result.adapter_dir)
    assert set(new) == set(lorakit.io.adapter_tensors(model, "default"))  # only the new adapter is shipped
    shared = set(new) & set(saved_before)  # (same module paths: the same on-disk keys)
    assert shared and not any(torch.equal(new[k], saved_before[k]) for k in shared)
    assert "progressive_from" not in json.loads((result.adapter_dir / "adapter_config.json").read_text())
    logged = [json.loads(l) for l in (config.out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["orthogonal_penalty"] > 0 for r in logged if r["split"] == "train")

    # the stack at inference: base + the earlier update + the new one, as in training
    ids = torch.randint(0, 100, (2, 9))
    model.eval()
    with torch.no_grad():
        trained_logits = model(input_ids=ids).logits
    stacked = load_trained([earlier_adapter, result.adapter_dir])
    assert lorakit.active_adapter(stacked.model) == ("stacked_0", "default")
    with torch.no_grad():
        torch.testing.assert_close(stacked.model(input_ids=ids).logits, trained_logits)
    base, _ = load_causal_lm(str(tiny_lm_dir))  # dense check: W + ΔW_earlier + ΔW_new on a plain model
    for name, w in model.named_modules():
        if isinstance(w, LayerWrapper):
            with torch.no_grad():
                base.get_submodule(name).weight += sum(a.delta_weight() for a in w.adapters.values())
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, trained_logits, atol=1e-5, rtol=1e-4)
    # the new adapter alone brings its stack (stacked_on.json); without the record it is the new update only
    alone = load_trained(result.adapter_dir)
    assert lorakit.active_adapter(alone.model) == ("stacked_0", "default")
    with torch.no_grad():
        torch.testing.assert_close(alone.model(input_ids=ids).logits, trained_logits)
    bare = shutil.copytree(result.adapter_dir, config.out / "bare")
    (bare / STACK_NAME).unlink()
    with torch.no_grad():
        assert not torch.allclose(load_trained(bare).model(input_ids=ids).logits, trained_logits, atol=1e-4)
    with pytest.raises(InputError, match="trained on top of"):  # the server runs one adapter per request
        Registry(str(tiny_lm_dir), None, None).register_unloaded("new", result.adapter_dir)


def test_generate_stacks_repeated_adapters(earlier_adapter, capsys):
    assert main(["generate", "--adapter", str(earlier_adapter), "--adapter", str(earlier_adapter),
                 "--max-new-tokens", "2", "hello"]) == 0


def test_progressive_run_resumes_to_the_uninterrupted_result(sft_config, earlier_adapter, tmp_path):
    stack = f"lora.progressive_from=[{earlier_adapter}]"
    whole = sft_config(stack, "train.steps=3", "data.eval=null", f"output_dir={tmp_path / 'whole'}")
    train(whole, quiet=True)
    part = sft_config(stack, "train.steps=2", "train.save_every=1", "data.eval=null", f"output_dir={tmp_path / 'part'}")
    train(part, quiet=True)
    resumed = sft_config(stack, "train.steps=3", "data.eval=null", f"output_dir={tmp_path / 'part'}")
    train(resumed, resume=True, quiet=True)
    a, b = read_weights(tmp_path / "whole" / "adapter"), read_weights(tmp_path / "part" / "adapter")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
