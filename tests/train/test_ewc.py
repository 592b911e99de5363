"""Continuing an adapter, the Fisher file of a run, and the EWC penalty (train/continual.py)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.io import read_weights
from lorakit.train import continual
from lorakit.train.continual import EwcPenalty, fisher_diagonal, trained_tensors
from lorakit.train.loop import train
from lorakit.train.losses import causal_lm_loss_sum
from lorakit.train.prepare import prepare
from lorakit.data.batching import collate_padded


def rows(run_dir, split):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_lm_dir, sft_files):
    """Task A trained 3 steps, its Fisher over 4 rows saved beside the adapter."""
    from lorakit.train.config import RunConfig
    from lorakit.yamlconfig import load_config

    out = tmp_path_factory.mktemp("task-a") / "run"
    config = load_config(RunConfig, None, ["train.save_fisher_samples=4"], base={
        "model": {"name": str(tiny_lm_dir)}, "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": sft_files[0], "max_length": 64, "max_tokens": 128},
        "train": {"steps": 3, "lr": 1e-2, "schedule": "constant"}, "output_dir": str(out)})
    train(config, quiet=True)
    return out


def test_fisher_file_round_trips_the_adapter_keys(first_run):
    fisher = load_file(str(first_run / continual.FISHER_NAME))
    weights = read_weights(first_run / "adapter")
    assert set(fisher) == set(weights)
    assert all(fisher[k].shape == weights[k].shape and fisher[k].dtype == torch.float32 for k in fisher)
    assert all(bool((f >= 0).all()) for f in fisher.values()) and any(bool((f > 0).any()) for f in fisher.values())
    (row,) = rows(first_run, "fisher")
    assert row["samples"] == 4 and row["mean"] > 0


def test_fisher_is_the_mean_squared_gradient_per_row(sft_config):
    run = prepare(sft_config())
    params = trained_tensors(run.model)
    collate = lambda ex: collate_padded(ex, run.tokenizer.pad_token_id)  # noqa: E731
    got = fisher_diagonal(run.model, causal_lm_loss_sum, run.train_examples, collate, 3, seed=1)
    order = torch.randperm(len(run.train_examples), generator=torch.Generator().manual_seed(1)).tolist()[:3]
    expected = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in order:
        grads = torch.autograd.grad(causal_lm_loss_sum(run.model, collate([run.train_examples[i]])),
                                    list(params.values()))
        for k, g in zip(params, grads):
            expected[k] += g.square() / 3
    for k in params:
        torch.testing.assert_close(got[k], expected[k])


def test_continue_from_adapter_starts_at_its_weights(sft_config, first_run):
    run = prepare(sft_config(f"train.init_adapter={first_run / 'adapter'}"))
    saved = read_weights(first_run / "adapter")
    live = trained_tensors(run.model)
    assert set(live) == set(saved)
    for k, t in live.items():
        torch.testing.assert_close(t.detach(), saved[k])


def test_ewc_penalty_is_zero_at_the_anchor_and_the_formula_off_it():
    torch.manual_seed(0)
    p = {"a": torch.nn.Parameter(torch.randn(3, 4)), "b": torch.nn.Parameter(torch.randn(5))}
    anchor = {k: t.detach().clone() for k, t in p.items()}
    fisher = {k: torch.rand(t.shape) for k, t in p.items()}
    term = EwcPenalty(p, fisher, anchor, strength=3.0)
    assert float(term.penalty().detach()) == 0.0
    with torch.no_grad():
        for t in p.values():
            t.add_(torch.randn(t.shape) * 0.1)
    expected = 1.5 * sum((fisher[k] * (p[k] - anchor[k]) ** 2).sum() for k in p)
    torch.testing.assert_close(term.regularizer(None), expected)
    assert term.metrics() == {"ewc_penalty": pytest.approx(float(expected))}
    term.penalty().backward()  # the gradient reaches the live parameters: λ F (θ - θ*)
    torch.testing.assert_close(p["b"].grad, 3.0 * fisher["b"] * (p["b"] - anchor["b"]).detach())


def test_ewc_with_a_huge_lambda_keeps_the_adapter_near_its_anchor(sft_config, first_run, sft_files):
    """Measured where EWC promises it: the Fisher-weighted distance Σ F (θ - θ*)² (AdamW moves every
    weight by about the lr on its first step, whatever the loss, so the plain distance cannot drop to 0)."""
    anchor, fisher = read_weights(first_run / "adapter"), load_file(str(first_run / continual.FISHER_NAME))

    def drift(*overrides):
        config = sft_config(f"data.train={sft_files[1]}", "train.steps=8", "data.eval=null", *overrides)
        train(config, quiet=True)
        after = read_weights(config.out / "adapter")
        return sum(float((fisher[k] * (after[k] - anchor[k]) ** 2).sum()) for k in anchor), config.out

    free, _ = drift(f"train.init_adapter={first_run / 'adapter'}")
    held, out = drift(f"train.ewc={{lambda: 1.0e+6, from: {first_run}}}", "output_dir=" + str(first_run.parent / "ewc"))
    assert free > 0 and held < free / 10
    logged = rows(out, "train")
    assert len(logged) == 8 and logged[0]["ewc_penalty"] == 0.0 and logged[1]["ewc_penalty"] > 0
