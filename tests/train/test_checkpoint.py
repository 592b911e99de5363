"""Checkpoints: everything a resumed run needs comes back exactly; incomplete ones are never picked."""
import copy
import json
import random

import pytest
import torch

import lorakit
from helpers import tiny_llama
from lorakit.train import checkpoint
from lorakit.train.optim import build_optimizer
from lorakit.train.schedule import build_scheduler


def _setup(dropout=0.1):
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=dropout))
    model.train()
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, total=10, warmup=2, schedule="cosine")
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    ids = torch.randint(0, 128, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_restore_brings_back_weights_optimizer_scheduler_rngs_and_trainer_state(tmp_path):
    model, optimizer, scheduler = _setup()
    for _ in range(3):
        _step(model, optimizer, scheduler)
    state = {"best_eval_loss": 1.25, "bad_evals": 1, "batches": {"epoch": 2, "index": 5, "seed": 0, "fingerprint": "x"}}
    path = checkpoint.save(tmp_path, 3, model, optimizer, scheduler, state, lambda d: None, keep_last=2)
    weights = _trainable(model)
    opt_state, sched_state = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict())
    torch_rng, py_rng = torch.get_rng_state(), random.getstate()
    next_torch, next_py = torch.rand(4), [random.random() for _ in range(3)]

    for _ in range(2):  # move every piece on, then restore into fresh objects
        _step(model, optimizer, scheduler)
    random.random()
    fresh_model, fresh_opt, fresh_sched = _setup()
    restored = checkpoint.restore(path, fresh_model, fresh_opt, fresh_sched)

    assert restored == dict(state, step=3, python_rng=restored["python_rng"])
    torch.testing.assert_close(_trainable(fresh_model), weights, rtol=0, atol=0)
    assert fresh_sched.state_dict() == sched_state
    got = fresh_opt.state_dict()
    assert got["param_groups"] == opt_state["param_groups"]
    for key, moments in opt_state["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got["state"][key][name], moments[name], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == py_rng
    assert torch.equal(torch.rand(4), next_torch) and [random.random() for _ in range(3)] == next_py


def test_restored_run_takes_the_same_next_step_with_dropout(tmp_path):
    model, optimizer, scheduler = _setup(dropout=0.5)
    _step(model, optimizer, scheduler)
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {}, lambda d: None, keep_last=1)
    _step(model, optimizer, scheduler)
    expected = _trainable(model)

    again, again_opt, again_sched = _setup(dropout=0.5)
    torch.manual_seed(123)  # whatever the RNG did meanwhile, restore() puts it back
    checkpoint.restore(path, again, again_opt, again_sched)
    _step(again, again_opt, again_sched)
    torch.testing.assert_close(_trainable(again), expected, rtol=0, atol=0)


def test_layout_extras_and_pruning(tmp_path):
    model, optimizer, scheduler = _setup()
    for step in range(1, 5):
        checkpoint.save(tmp_path, step, model, optimizer, scheduler, {"k": step},
                        lambda d: (d / "extra.txt").write_text("x"), keep_last=2)
    root = checkpoint.checkpoint_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-000003", "step-000004"]
    files = {p.name for p in (root / "step-000004").iterdir()}
    assert files == {"trainable.safetensors", "optimizer.pt", "trainer_state.json", "extra.txt"}
    assert json.loads((root / "step-000004" / "trainer_state.json").read_text())["k"] == 4
    torch.load(root / "step-000004" / "optimizer.pt", weights_only=True)  # no pickled objects


def test_latest_ignores_half_written_checkpoints(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    model, optimizer, scheduler = _setup()
    checkpoint.save(tmp_path, 2, model, optimizer, scheduler, {}, lambda d: None, keep_last=3)
    root = checkpoint.checkpoint_root(tmp_path)
    (root / ".tmp-step-000004").mkdir()  # killed while writing
    (root / "step-000003").mkdir()  # renamed but without its state file
    assert checkpoint.latest(tmp_path) == root / "step-000002"


def test_restore_refuses_a_checkpoint_of_another_adapter_layout(tmp_path):
    model, optimizer, scheduler = _setup()
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {}, lambda d: None, keep_last=1)
    other = tiny_llama()
    lorakit.inject(other, lorakit.LoraConfig(r=4, target_modules=["k_proj"]))
    other_opt = build_optimizer(other, lr=1e-2)
    with pytest.raises(ValueError, match="does not match this run"):
        checkpoint.restore(path, other, other_opt, build_scheduler(other_opt, 10, 0, "linear"))


def test_leftovers_of_a_killed_save_are_ignored_then_cleaned(tmp_path):
    model, optimizer, scheduler = _setup()
    checkpoint.save(tmp_path, 2, model, optimizer, scheduler, {}, lambda d: None, keep_last=1)
    root = checkpoint.checkpoint_root(tmp_path)
    (root / ".trash-step-000001").mkdir()  # killed while deleting an old checkpoint
    (root / ".trash-step-000001" / "trainer_state.json").write_text("{}")
    (root / ".tmp-step-000003").mkdir()  # killed while writing a new one
    assert checkpoint.latest(tmp_path) == root / "step-000002"
    checkpoint.save(tmp_path, 4, model, optimizer, scheduler, {}, lambda d: None, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000004"]


def test_check_names_the_broken_file_before_restore_runs(tmp_path):
    model, optimizer, scheduler = _setup()
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {"batches": {}}, lambda d: None, keep_last=1)
    checkpoint.check(path, model)
    data = (path / "optimizer.pt").read_bytes()
    (path / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="optimizer.pt: truncated or corrupt"):
        checkpoint.check(path)
