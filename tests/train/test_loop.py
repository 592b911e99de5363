"""The training loop's promises, on tiny random models saved as local HF dirs (tests/train/conftest.py)."""
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import lorakit
from lorakit.data.batching import collate_padded
from lorakit.models import load_causal_lm, load_classifier
from lorakit.train import checkpoint, evaluate, loop
from lorakit.train.config import RunConfig
from lorakit.train.loop import TrainingError, train
from lorakit.train.losses import count_targets
from lorakit.train.prepare import prepare
from lorakit.train.schedule import lr_factor
from lorakit.yamlconfig import load_config


class FixedBatches:
    """Stands in for a BatchLoader: the same list of batches every epoch (state is trivial)."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@contextmanager
def gradients_at_each_step(model):
    """Yields a list that gets {param name: grad} each time any optimizer steps (after clipping)."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []

    def hook(optimizer, args, kwargs):
        seen.append({names[id(p)]: p.grad.detach().clone()
                     for g in optimizer.param_groups for p in g["params"] if p.grad is not None})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def metrics(run_dir, split="train"):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def test_run_writes_metrics_curve_config_and_a_loadable_adapter(sft_config, recwarn):
    config = sft_config("train.steps=3", "eval.generate=true")
    run = prepare(config)
    result = train(config, run=run, quiet=True)
    out = config.out

    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert [r["loss"] for r in metrics(out)] == pytest.approx(result.losses)
    (final,) = metrics(out, "eval")
    assert final["step"] == 3 and {"loss", "perplexity", "exact_match"} <= set(final)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(RunConfig, str(out / "config.yaml")) == config
    assert result.adapter_dir == out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in result.adapter_dir.iterdir()}
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == config.model.name
    assert not any("requires_grad=True to a scalar" in str(w.message) for w in recwarn)

    base, _ = load_causal_lm(config.model.name)
    lorakit.load_adapter(base, result.adapter_dir)
    ids = torch.tensor([[1, 5, 9, 200, 4000]])
    run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, run.model(input_ids=ids).logits)


VARIANTS = {
    "dora": ("lora.use_dora=true",),
    "rslora": ("lora.use_rslora=true",),
    "pissa": ("lora.init_lora_weights=pissa",),
    "loraplus": ("train.loraplus_lr_ratio=16", "train.lr=2e-3"),
    "vera": ("method=vera", "vera.r=16", "train.lr=5e-2"),
    "adalora": ("method=adalora", "adalora.init_r=6", "adalora.target_r=2", "adalora.tinit=2", "adalora.tfinal=2",
                "adalora.target_modules=all-linear", "train.lr=5e-2"),
    "ia3": ("method=ia3", "ia3.target_modules=all-linear", "ia3.feedforward_modules=[down_proj]", "train.lr=0.3",
            "train.steps=30"),  # 144 scaling entries on this 1-layer, hidden-16 model: slower to move the loss
    "bottleneck": ("method=bottleneck", "bottleneck.placement=houlsby", "bottleneck.bottleneck_size=8"),
}
VIRTUAL_TOKEN_VARIANTS = {
    "prompt_tuning": ("method=prompt_tuning", "prompt_tuning.num_virtual_tokens=4", "train.lr=5e-2"),
    "p_tuning": ("method=p_tuning", "p_tuning.num_virtual_tokens=4", "train.lr=1e-2"),
    "prefix_tuning": ("method=prefix_tuning", "prefix_tuning.num_virtual_tokens=4", "train.lr=1e-1", "train.steps=20"),
}


@pytest.mark.parametrize("variant", list(VARIANTS) + list(VIRTUAL_TOKEN_VARIANTS))
def test_trainer_trains_each_variant_and_saves_a_loadable_adapter(sft_config, variant, request):
    overrides = VARIANTS.get(variant) or VIRTUAL_TOKEN_VARIANTS[variant]
    if variant in VIRTUAL_TOKEN_VARIANTS:  # (the default tiny model's logits hardly move through attention inputs)
        overrides = (*overrides, f"model.name={request.getfixturevalue('tiny_lm_dir_wide')}")
    drop = ("lora",) if any(o.startswith("method=") for o in overrides) else ()
    config = sft_config("train.steps=12", *overrides, drop=drop)
    run = prepare(config)
    result = train(config, run=run, quiet=True, eval_before=True)
    assert result.final_eval.loss < result.first_eval.loss - 0.03, (result.first_eval.loss, result.final_eval.loss)

    base, _ = load_causal_lm(config.model.name)
    lorakit.load_adapter(base, result.adapter_dir)
    ids = torch.tensor([[1, 5, 9, 200, 4000]])
    run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, run.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_logged_lr_is_the_lr_each_step_used(sft_config):
    config = sft_config("train.steps=5", "train.warmup_steps=2", "train.schedule=linear", "train.lr=0.01")
    train(config, quiet=True)
    expected = [0.01 * lr_factor(s, 5, 2, "linear") for s in range(5)]
    assert [r["lr"] for r in metrics(config.out)] == pytest.approx(expected)


def test_gradient_accumulation_equals_one_big_batch(sft_config, tmp_path):
    """3 micro-batches of 1, 2 and 3 rows (different target counts) = one batch of all 6 rows."""
    accum = sft_config("train.steps=1", "train.grad_accum=3", "train.lr=1e-3", f"output_dir={tmp_path / 'accum'}")
    whole = sft_config("train.steps=1", "train.grad_accum=1", "train.lr=1e-3", f"output_dir={tmp_path / 'whole'}")
    run_a, run_w = prepare(accum), prepare(whole)
    examples, pad = run_a.train_batches.examples, run_a.tokenizer.pad_token_id
    micro = [collate_padded(examples[i:j], pad) for i, j in ((0, 1), (1, 3), (3, 6))]
    assert len({count_targets(b) for b in micro}) == 3
    run_a.train_batches = FixedBatches(micro)
    run_w.train_batches = FixedBatches([collate_padded(examples[:6], pad)])
    before = trainable(run_a.model)
    torch.testing.assert_close(trainable(run_w.model), before, rtol=0, atol=0)
    with torch.no_grad():
        big = run_w.train_batches.batches[0]
        mean_per_target = float(run_w.loss_sum(run_w.model, big)) / count_targets(big)

    with gradients_at_each_step(run_a.model) as grads_a:
        loss_a = train(accum, run=run_a, quiet=True).losses
    with gradients_at_each_step(run_w.model) as grads_w:
        loss_w = train(whole, run=run_w, quiet=True).losses

    assert loss_a == pytest.approx(loss_w, rel=1e-6) and loss_w == pytest.approx([mean_per_target], rel=1e-6)
    torch.testing.assert_close(grads_a[0], grads_w[0], rtol=1e-5, atol=1e-8)
    after = trainable(run_a.model)
    torch.testing.assert_close(after, trainable(run_w.model), rtol=0, atol=1e-6)
    assert any(not torch.equal(after[n], before[n]) for n in before)


_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from lorakit.train.config import RunConfig
from lorakit.train.loop import train
train(RunConfig.model_validate_json(sys.argv[1]), quiet=True)
"""


def test_resume_after_a_kill_matches_the_uninterrupted_run(sft_config, tmp_path):
    """Killed right after step 3's checkpoint, then resumed: steps 4-7 and the adapter are those of a run
    never stopped. Dropout (torch RNG), AdamW moments, a warmup+cosine schedule, accumulation, the eval
    history and the data position (4 batches an epoch, 7 × 2 micro-batches) all must be restored for this."""
    settings = ["train.steps=7", "train.grad_accum=2", "train.save_every=3", "train.eval_every=3",
                "train.schedule=cosine", "train.warmup_steps=2", "lora.lora_dropout=0.1", "train.lr=5e-3"]
    fresh = sft_config(*settings, f"output_dir={tmp_path / 'fresh'}")
    killed = sft_config(*settings, f"output_dir={tmp_path / 'killed'}")

    env = dict(os.environ, LORAKIT_FAULT_AFTER_STEP="3")
    child = subprocess.run([sys.executable, "-c", _CHILD, killed.model_dump_json(), str(torch.get_num_threads())],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    kept = checkpoint.latest(killed.out)
    state = json.loads((kept / "trainer_state.json").read_text())
    assert kept.name == "step-000003" and state["step"] == 3 and state["best_eval_loss"] is not None
    assert (state["batches"]["epoch"], state["batches"]["index"]) == (1, 2)  # mid-epoch
    assert not (killed.out / "adapter").exists()

    resumed = train(killed, resume=True, quiet=True)
    reference = train(fresh, quiet=True)

    final_state = json.loads((checkpoint.latest(fresh.out) / "trainer_state.json").read_text())
    assert final_state["batches"]["epoch"] == 3  # the resumed part crossed two epoch boundaries
    assert len(resumed.losses) == 4
    assert resumed.losses == pytest.approx(reference.losses[3:], rel=0, abs=1e-6)
    assert [r["step"] for r in metrics(killed.out)] == list(range(1, 8))
    assert [r["loss"] for r in metrics(killed.out)] == pytest.approx(reference.losses, rel=0, abs=1e-6)
    assert [r["step"] for r in metrics(killed.out, "eval")] == [3, 6, 7]
    torch.testing.assert_close(load_file(str(resumed.adapter_dir / "adapter_model.safetensors")),
                               load_file(str(reference.adapter_dir / "adapter_model.safetensors")), rtol=0, atol=1e-6)


def test_resume_without_a_checkpoint_fails_before_loading_anything(sft_config, monkeypatch):
    monkeypatch.setattr(loop, "prepare", lambda *a: pytest.fail("prepare() ran before the checkpoint check"))
    with pytest.raises(TrainingError, match="no checkpoint under"):
        train(sft_config(), resume=True, quiet=True)


def _poisoned_at_step_3(loss_sum, kind):
    """loss_sum, except that the 3rd call returns a NaN loss, or a finite loss whose gradient is NaN."""
    calls = []

    def poisoned(model, batch):
        calls.append(1)
        loss = loss_sum(model, batch)
        if len(calls) != 3:
            return loss
        if kind == "loss":
            return loss * float("nan")
        p = next(p for p in model.parameters() if p.requires_grad)
        return loss + torch.sqrt(p.sum() * 0)  # value 0, d/dp = inf · 0 = nan

    return poisoned


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_step_stops_naming_the_step_and_keeps_the_last_good_checkpoint(sft_config, kind):
    config = sft_config("train.steps=6", "train.save_every=1", "train.keep_last=5")
    run = prepare(config)
    run.loss_sum = _poisoned_at_step_3(run.loss_sum, kind)
    with pytest.raises(TrainingError, match=r"step 3: .*nan.*last good checkpoint: .*step-000002"):
        train(config, run=run, quiet=True)
    kept = checkpoint.latest(config.out)
    assert kept.name == "step-000002"
    assert all(t.isfinite().all() for t in load_file(str(kept / "trainable.safetensors")).values())
    assert all(p.isfinite().all() for p in run.model.parameters())
    assert not (config.out / "adapter").exists()
    assert [r["step"] for r in metrics(config.out)] == [1, 2]


def test_classification_with_string_labels_learns_and_saves_its_head(classify_config, classify_files):
    config = classify_config("data.eval=" + classify_files[0])
    run = prepare(config)
    assert run.labels == ["account", "billing", "shipping", "technical"]
    result = train(config, run=run, eval_before=True, quiet=True)

    assert result.final_eval.loss < 0.7 * result.first_eval.loss  # eval = train file here: the rows are learnt
    assert result.final_eval.accuracy > result.first_eval.accuracy + 0.25
    assert "accuracy" in metrics(config.out, "eval")[-1]
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["classifier"] and adapter_config["task_type"] == "SEQ_CLS"
    assert any("classifier" in k for k in load_file(str(result.adapter_dir / "adapter_model.safetensors")))

    base, tokenizer = load_classifier(config.model.name, run.labels)
    assert base.config.id2label == {0: "account", 1: "billing", 2: "shipping", 3: "technical"}
    lorakit.load_adapter(base, result.adapter_dir)
    batch = tokenizer(["my card was charged twice", "the app crashes"], padding=True, return_tensors="pt")
    run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).logits, run.model(**batch).logits)


@pytest.mark.parametrize("method", [("method=ia3", "train.lr=0.1"), ("method=bottleneck", "bottleneck.placement=parallel"),
                                    ("method=prompt_tuning", "train.lr=5e-2"), ("method=prefix_tuning", "train.lr=5e-2")])
def test_classification_trains_other_methods_with_the_head(classify_config, classify_files, method):
    config = classify_config(*method, "data.eval=" + classify_files[0], drop=("lora",))
    run = prepare(config)
    result = train(config, run=run, eval_before=True, quiet=True)
    # (a random hidden-16 encoder gives these methods little to rescale or add to: the loss is the clear signal)
    assert result.final_eval.loss < 0.8 * result.first_eval.loss
    assert result.final_eval.accuracy > result.first_eval.accuracy
    base, tokenizer = load_classifier(config.model.name, run.labels)
    lorakit.load_adapter(base, result.adapter_dir)
    batch = tokenizer(["my card was charged twice", "the app crashes"], padding=True, return_tensors="pt")
    run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).logits, run.model(**batch).logits)


def test_early_stopping_stops_after_patience_evals_without_gain(sft_config, monkeypatch):
    eval_losses = iter([3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(evaluate, "mean_loss", lambda *args: (next(eval_losses), 1.0))
    config = sft_config("train.steps=10", "train.eval_every=1", "train.early_stopping_patience=2")
    result = train(config, quiet=True)

    assert result.stopped_early and result.steps == 6 and len(result.losses) == 6
    assert [r["step"] for r in metrics(config.out, "eval")] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.latest(config.out).name == "step-000006"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_gradient_checkpointing_trains_lora_weights_like_plain_backprop(sft_config, tmp_path):
    """Same losses, gradients and updates with activations recomputed in backward (dropout masks included)."""
    runs = {}
    for on in (False, True):
        config = sft_config("train.steps=2", "lora.lora_dropout=0.1", f"model.gradient_checkpointing={on}",
                            f"output_dir={tmp_path / str(on)}")
        run = prepare(config)
        assert run.model.is_gradient_checkpointing == on
        with gradients_at_each_step(run.model) as grads:
            losses = train(config, run=run, quiet=True).losses
        runs[on] = losses, grads[-1], trainable(run.model)

    (loss_plain, grads_plain, after_plain), (loss_gc, grads_gc, after_gc) = runs[False], runs[True]
    assert grads_gc.keys() == after_gc.keys() and any("lora_A" in n for n in grads_gc)
    assert all(g.abs().sum() > 0 for g in grads_gc.values())  # step 2: B != 0, so A gets gradient too
    assert loss_gc == pytest.approx(loss_plain, rel=1e-5)
    torch.testing.assert_close(grads_gc, grads_plain, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(after_gc, after_plain, rtol=1e-4, atol=1e-6)


def test_full_finetuning_saves_a_loadable_model_dir(sft_config):
    config = sft_config("method=full", "train.steps=2", "train.lr=1e-3", "model.gradient_checkpointing=true")
    run = prepare(config)
    assert run.model.is_gradient_checkpointing
    assert all(p.requires_grad for p in run.model.parameters())
    result = train(config, run=run, quiet=True)

    assert result.adapter_dir == config.out / "model" and not (config.out / "adapter").exists()
    trained, _ = load_causal_lm(str(result.adapter_dir))
    base, _ = load_causal_lm(config.model.name)
    changed = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert any("layers.0" in n for n in changed)
    torch.testing.assert_close(trained.state_dict(), run.model.state_dict())
    assert (checkpoint.latest(config.out) / "model" / "config.json").is_file()


def test_truncated_rows_are_counted_on_the_console_and_in_metrics(sft_config, capsys):
    config = sft_config("train.steps=1", "data.max_length=40")
    train(config)
    (row,) = [r for r in map(json.loads, (config.out / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "data"]
    assert row["train_rows"] == 8 and 0 < row["train_truncated"] <= 8 and row["train_longest"] > 40
    assert row["eval_rows"] == 2
    out = capsys.readouterr().out
    assert f"data (train): {row['train_kept']}/8 rows kept, {row['train_truncated']} truncated (longest " in out
