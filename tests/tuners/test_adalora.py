"""AdaLoRA: SVD-form layers, the rank allocator and its budget, the trainer's hooks, peft's file format both ways."""
import copy
import json
import warnings

import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES, logits, peft_from_pretrained, tiny_llama
from lorakit.inject import adapter_configs
from lorakit.strict import ConfigError
from lorakit.tuners.adalora import STATE_FILE, AdaLoraAdapter, RankAllocator, find_adapters, training_hooks
from lorakit.yamlconfig import load_config

peft = pytest.importorskip("peft")
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}


def _config(arch, **kw):
    return lorakit.AdaLoraConfig(**{"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "total_step": 8,
                                    "lora_alpha": 16, "target_modules": TARGETS[arch], **kw})


def _adalora(arch, **kw):
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, _config(arch, **kw))
    return model


def _randomize(model, seed=0):
    """Non-zero Λ (and larger P, Q): equivalence checks with Λ = 0 prove nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in find_adapters(model).values():
            for p, std in ((a.lora_A, 0.3), (a.lora_E, 1.0), (a.lora_B, 0.3)):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _train(model, ids, steps=8, lr=1e-2):
    """`steps` optimizer steps with lorakit's hooks; returns the losses (penalty included)."""
    hooks = training_hooks(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        loss = model(input_ids=ids, labels=ids).loss + hooks.regularizer(model)
        loss.backward()
        opt.step()
        hooks.after_step(model, step)
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def _kept(model):
    return {n: int(a.mask.sum()) for n, a in find_adapters(model).items()}


def test_fresh_adapter_is_identity(input_ids):
    model = tiny_llama()
    expected = logits(model, input_ids)
    lorakit.inject(model, _config("llama"))
    torch.testing.assert_close(logits(model, input_ids), expected)
    adapters = find_adapters(model)
    assert len(adapters) == 6 and all(isinstance(a, AdaLoraAdapter) for a in adapters.values())
    q = adapters["model.layers.0.self_attn.q_proj"]
    assert (q.lora_A.shape, q.lora_E.shape, q.lora_B.shape) == ((4, 32), (4, 1), (32, 4))
    assert not q.lora_E.any() and 0.01 < q.lora_A.std() < 0.03 and q.ranknum == 4
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_E", "lora_B"}


@pytest.mark.parametrize("arch, path", [("llama", "model.layers.0.self_attn.v_proj"),
                                        ("gpt2", "transformer.h.0.attn.c_attn")])
def test_forward_equals_dense_formula(arch, path):
    model = _adalora(arch)
    _randomize(model)
    layer = model.get_submodule(path)
    a = layer.adapters["default"]
    a.set_mask(torch.tensor([True, False, True, True]))
    lam = a.lora_E.view(-1) * torch.tensor([1.0, 0.0, 1.0, 1.0])
    dw = a.lora_B @ torch.diag(lam) @ a.lora_A * 16 / (4 + 1e-5)  # P diag(Λ) Q · alpha / (ranknum + 1e-5)
    torch.testing.assert_close(a.delta_weight(), dw)
    x = torch.randn(2, 3, a.lora_A.shape[1])
    w = layer.base.weight.T if arch == "gpt2" else layer.base.weight  # Conv1D stores (in, out)
    bias = layer.base.bias if layer.base.bias is not None else 0
    torch.testing.assert_close(layer(x), x @ (w + dw).T + bias, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_unmerge_round_trip(arch, input_ids):
    model = _adalora(arch)
    _randomize(model)
    next(iter(find_adapters(model).values())).set_mask(torch.tensor([False, True, True, False]))
    expected = logits(model, input_ids)
    assert not torch.allclose(expected, logits(MODEL_FACTORIES[arch](), input_ids), atol=1e-3)
    lorakit.merge(model)
    lorakit.merge(model)  # idempotent
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    lorakit.unmerge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=1e-5, rtol=1e-5)
    assert set(merged.state_dict()) == set(MODEL_FACTORIES[arch]().state_dict())
    unloaded = lorakit.unload(_adalora(arch))
    torch.testing.assert_close(logits(unloaded, input_ids), logits(MODEL_FACTORIES[arch](), input_ids))


def test_save_layout_and_round_trip(tmp_path, input_ids):
    from safetensors.torch import load_file, save_file

    model = _adalora("llama")
    _randomize(model)
    _train(model, input_ids)
    kept = _kept(model)
    assert sum(kept.values()) == 2 * 6 and min(kept.values()) < 4  # pruned to target_r on average
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["init_r"] == 4 and cfg["total_step"] == 8
    assert {k: sum(v) for k, v in cfg["rank_pattern"].items()} == {f"{n}.lora_E": r for n, r in kept.items()}
    keys = load_file(tmp_path / "adapter_model.safetensors")
    q, r = "base_model.model.model.layers.0.self_attn.q_proj", kept["model.layers.0.self_attn.q_proj"]
    shapes = tuple(keys[f"{q}.{f}"].shape for f in ("lora_A", "lora_E", "lora_B"))
    assert shapes == ((r, 32), (r, 1), (32, r))
    assert len(keys) == 3 * 6  # A, E, B per layer; ranknum is not saved (peft neither)

    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), expected)
    loaded = find_adapters(fresh)["model.layers.0.self_attn.q_proj"]
    assert loaded.r == r and loaded.ranknum == 4  # pruned size, same scaling
    lorakit.save_adapter(fresh, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert again["rank_pattern"] == cfg["rank_pattern"]

    del keys[f"{q}.lora_E"]
    save_file(keys, tmp_path / "adapter_model.safetensors")
    with pytest.raises(lorakit.AdapterFormatError, match="missing keys"):
        lorakit.load_adapter(tiny_llama(), tmp_path)


@pytest.mark.parametrize("pruned", [True, False])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lorakit_adalora_loads_in_peft(arch, pruned, tmp_path, input_ids):
    model = _adalora(arch)
    _randomize(model)
    if pruned:
        _train(model, input_ids)
        next(iter(find_adapters(model).values())).set_mask(torch.zeros(4, dtype=torch.bool))  # an r'=0 layer
    lorakit.save_adapter(model, tmp_path)
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert (pattern is not None) == pruned
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)
    torch.testing.assert_close(logits(theirs, input_ids), logits(model, input_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_adalora_loads_in_lorakit(arch, tmp_path, input_ids):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(MODEL_FACTORIES[arch](), peft.AdaLoraConfig(
            init_r=4, target_r=1, tinit=1, tfinal=2, total_step=8, lora_alpha=16, target_modules=TARGETS[arch],
            init_lora_weights=False))
        opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
        theirs.train()
        for step in range(8):  # peft's loop: its allocator prunes the adapter to the budget
            theirs(input_ids=input_ids, labels=input_ids).loss.backward()
            opt.step()
            theirs.base_model.update_and_allocate(step)
            opt.zero_grad()
        theirs.eval()
        theirs.save_pretrained(tmp_path)
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert not all(all(m) for m in pattern.values())
    ours = MODEL_FACTORIES[arch]()
    lorakit.load_adapter(ours, tmp_path)
    assert _kept(ours) == {k.removesuffix(".lora_E"): sum(m) for k, m in pattern.items()}
    torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)


def test_budget_schedule_matches_peft():
    kw = dict(init_r=6, target_r=2, tinit=3, tfinal=4, total_step=20, deltaT=2, target_modules=TARGETS["llama"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tiny_llama(), peft.AdaLoraConfig(**kw)).base_model.rankallocator
    ours = RankAllocator(lorakit.AdaLoraConfig(**kw), 20, find_adapters(_adalora("llama", **kw)))
    assert (ours.init_budget, ours.target_budget) == (36, 12)
    assert [ours.budget(t) for t in range(25)] == [theirs.budget_schedule(t) for t in range(25)]


def test_orth_regularizer_is_nonzero_and_differentiable():
    model = _adalora("llama", orth_reg_weight=0.3)
    hooks = training_hooks(model)
    reg = hooks.regularizer(model)
    eye = torch.eye(4)
    manual = torch.stack([torch.linalg.matrix_norm(m - eye) for a in find_adapters(model).values()
                          for m in (a.lora_A @ a.lora_A.T, a.lora_B.T @ a.lora_B)]).mean() * 0.3
    torch.testing.assert_close(reg, manual)
    assert reg > 0
    reg.backward()
    a = find_adapters(model)["model.layers.0.self_attn.q_proj"]
    assert a.lora_A.grad.abs().sum() > 0 and a.lora_B.grad.abs().sum() > 0


def test_training_lowers_loss_and_follows_budget(input_ids):
    model = _adalora("gpt2", init_r=6, target_r=3, tinit=2, tfinal=3, total_step=12)
    losses = _train(model, input_ids, steps=12, lr=2e-2)
    assert losses[-1] < losses[0]
    assert sum(_kept(model).values()) == 3 * 4  # target_r × layers once the schedule is done
    for a in find_adapters(model).values():
        assert not a.lora_E[~a.mask].any()  # masked Λ are exactly 0


def test_total_step_and_schedule_checks(tmp_path):
    model = _adalora("llama", total_step=None)
    with pytest.raises(ValueError, match="total_step"):
        training_hooks(model)
    with pytest.warns(UserWarning, match="peft refuses to load it"):
        lorakit.save_adapter(model, tmp_path)
    training_hooks(model, total_step=9)
    assert adapter_configs(model)["default"].total_step == 9  # saved adapters carry it
    with pytest.raises(ValueError, match="no pruning phase"):
        training_hooks(_adalora("llama", tinit=6, tfinal=2, total_step=8))
    with pytest.raises(TypeError, match="embeddings"):
        lorakit.inject(tiny_llama(), _config("llama", target_modules=["embed_tokens"]))


def test_allocator_state_round_trip_reproduces_next_step(tmp_path, input_ids):
    model = _adalora("llama", total_step=12, tfinal=2)
    _randomize(model)
    hooks = training_hooks(model)
    for step in range(1, 4):
        hooks.regularizer(model).backward()
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        hooks.after_step(model, step)
        model.zero_grad()
    hooks.save(model, tmp_path)
    assert (tmp_path / STATE_FILE).is_file()
    twin = copy.deepcopy(model)
    for a in find_adapters(twin).values():
        a.set_mask(torch.ones_like(a.mask))
    twin_hooks = training_hooks(twin)
    twin_hooks.load(twin, tmp_path)
    for m, h in ((model, hooks), (twin, twin_hooks)):
        m(input_ids=input_ids, labels=input_ids).loss.backward()
        h.after_step(m, 4)
    assert _kept(twin) == _kept(model) and sum(_kept(model).values()) < 24
    for (_, a), (_, b) in zip(find_adapters(model).items(), find_adapters(twin).items()):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.lora_E, b.lora_E)


# ---- the trainer ---------------------------------------------------------------------------------
def _run(tmp_path, **train):
    from lorakit.data.batching import grouped_batches
    from lorakit.data.tokenize import Example
    from lorakit.train.config import RunConfig
    from lorakit.train.prepare import Prepared, attach_method

    config = RunConfig(method="adalora", data={"train": "unused"}, output_dir=str(tmp_path),
                       adalora=dict(init_r=4, target_r=2, tinit=1, tfinal=2, target_modules=TARGETS["llama"]),
                       train={"steps": 8, "lr": 1e-2, "seed": 0, "schedule": "constant", **train})
    torch.manual_seed(0)
    model = tiny_llama()
    attach_method(model, config)
    g = torch.Generator().manual_seed(0)
    examples = [Example(ids, ids) for ids in torch.randint(0, 128, (12, 10), generator=g).tolist()]
    run = Prepared(model=model, tokenizer=None, train_batches=grouped_batches(examples, 40, 0, seed=0),
                   eval_batches=None)
    return config, run


def test_trainer_runs_allocator_to_the_budget(tmp_path):
    from lorakit.train.loop import train

    config, run = _run(tmp_path)
    assert isinstance(config.adapter, lorakit.AdaLoraConfig) and config.adapter.total_step is None
    result = train(config, run=run, quiet=True)
    assert sum(_kept(run.model).values()) == 2 * 6  # target_r × layers after the final allocation
    assert all(torch.isfinite(torch.tensor(result.losses)))
    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert saved["total_step"] == 8  # filled in from the trainer's step count
    assert sum(sum(m) for m in saved["rank_pattern"].values()) == 12
    assert list((tmp_path / "checkpoints").glob(f"step-*/{STATE_FILE}"))


def test_trainer_resume_restores_the_allocator(tmp_path):
    import shutil

    from lorakit.train.loop import train

    config, run = _run(tmp_path / "a", steps=6, save_every=3)
    train(config, run=run, quiet=True)
    reference = {n: (a.mask.clone(), a.lora_E.detach().clone()) for n, a in find_adapters(run.model).items()}
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step-000006")
    config, run = _run(tmp_path / "a", steps=6, save_every=3)
    assert len(train(config, resume=True, run=run, quiet=True).losses) == 3  # steps 4..6 only
    for name, a in find_adapters(run.model).items():
        assert torch.equal(a.mask, reference[name][0])
        torch.testing.assert_close(a.lora_E.detach(), reference[name][1])


def test_run_config_chooses_adalora_strictly():
    from lorakit.train.config import RunConfig

    config = load_config(RunConfig, None, ["method=adalora", "adalora.init_r=6", "adalora.target_r=4",
                                           "data.train=x"])
    assert isinstance(config.adapter, lorakit.AdaLoraConfig) and config.adapter.init_r == 6
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config  # the resolved config reloads
    with pytest.raises(ConfigError, match="adalora.bogus: unknown key"):
        load_config(RunConfig, None, ["method=adalora", "adalora.bogus=1", "data.train=x"])
    with pytest.raises(ConfigError, match="method is 'lora'"):
        load_config(RunConfig, None, ["adalora.init_r=16", "data.train=x"])
    with pytest.raises(ConfigError, match="`lora:` settings"):
        load_config(RunConfig, None, ["method=adalora", "lora.r=4", "data.train=x"])
    assert isinstance(load_config(RunConfig, None, ["data.train=x"]).adapter, lorakit.LoraConfig)
