"""Adapter arithmetic: lorakit.combine_adapters / `lorakit combine` against peft's add_weighted_adapter."""
import warnings

import pytest
import torch

import lorakit
from helpers import logits, peft_from_pretrained, randomize_lora_b, tiny_gpt2, tiny_llama
from lorakit.cli import main
from lorakit.errors import InputError
from lorakit.merge import COMBINATIONS

peft = pytest.importorskip("peft")

ADAPTERS = {"a": dict(r=4, lora_alpha=8), "b": dict(r=4, lora_alpha=3), "c": dict(r=4, lora_alpha=16)}
WEIGHTS = [0.7, -0.4, 1.2]
DENSITY = {m: (0.5 if c.uses_density else None) for m, c in COMBINATIONS.items()}


class SharedBernoulli:
    """torch.bernoulli drawing from one generator reset per call site: peft and lorakit then see the same
    random stream (peft's own adapter initialisation also draws from the global one)."""

    def __init__(self):
        self.real, self.generator = torch.bernoulli, torch.Generator()

    def __call__(self, p, *args, generator=None, **kwargs):
        return self.real(p, generator=self.generator)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three peft adapters (random A and B, different scalings) on q, v, down and the embeddings, saved."""
    root = tmp_path_factory.mktemp("peft-adapters")
    model = None
    for i, (name, cfg) in enumerate(ADAPTERS.items()):
        torch.manual_seed(i)
        config = peft.LoraConfig(target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                                 init_lora_weights=False, **cfg)
        with warnings.catch_warnings(action="ignore"):
            if model is None:
                model = peft.get_peft_model(tiny_llama(), config, adapter_name=name)
            else:
                model.add_adapter(name, config)
    model.save_pretrained(root)
    return root


def _ours(adapters):
    model = tiny_llama()
    for name in ADAPTERS:
        with warnings.catch_warnings(action="ignore"):
            lorakit.load_adapter(model, adapters / name, adapter_name=name)
    return model


def _theirs(adapters):
    with warnings.catch_warnings(action="ignore"):
        model = peft.PeftModel.from_pretrained(tiny_llama(), adapters / "a", adapter_name="a").eval()
        for name in list(ADAPTERS)[1:]:
            model.load_adapter(adapters / name, adapter_name=name)
    return model


def test_every_method_equals_peft(adapters, input_ids, monkeypatch):
    """Same adapters, weights (one negative) and method → the same logits as peft (DARE with the same drop)."""
    ours, theirs = _ours(adapters), _theirs(adapters)
    shared = SharedBernoulli()
    monkeypatch.setattr(torch, "bernoulli", shared)
    for method, density in DENSITY.items():
        shared.generator.manual_seed(5)
        with warnings.catch_warnings(action="ignore"):
            theirs.add_weighted_adapter(list(ADAPTERS), WEIGHTS, method, combination_type=method, density=density)
        theirs.set_adapter(method)
        shared.generator.manual_seed(5)
        lorakit.combine_adapters(ours, list(ADAPTERS), WEIGHTS, method, method=method, density=density)
        lorakit.set_adapter(ours, method)
        torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5,
                                   msg=method)
        q = theirs.base_model.model.model.layers[1].self_attn.q_proj
        torch.testing.assert_close(ours.model.layers[1].self_attn.q_proj.adapters[method].delta_weight(),
                                   q.get_delta_weight(method), atol=1e-5, rtol=1e-5, msg=method)


def test_dare_drops_the_share_asked_and_rescales_by_density(adapters):
    """With lorakit's own seeded stream, DARE keeps ≈ density of the entries, each scaled by 1/density."""
    model = _ours(adapters)
    for name in ("d1", "d2"):
        lorakit.combine_adapters(model, ["a"], [1.0], name, method="dare_linear", density=0.3, seed=1)
    layer = model.model.layers[0].mlp.down_proj
    old = layer.adapters["a"]
    for side in ("lora_A", "lora_B"):
        new = getattr(layer.adapters["d1"], side)
        assert torch.equal(new, getattr(layer.adapters["d2"], side))  # the same seed, the same drop
        kept = new != 0
        assert 0.2 < kept.float().mean() < 0.4
        torch.testing.assert_close(new[kept], getattr(old, side)[kept] * old.scaling ** 0.5 / 0.3)


def test_cat_is_exact_and_negation_removes_a_task(adapters, input_ids):
    model = _ours(adapters)
    lorakit.combine_adapters(model, ["a", "b"], [1.0, 1.0], "ab", method="cat")
    lorakit.combine_adapters(model, ["ab", "a"], [1.0, -1.0], "b_again", method="cat")
    for _, layer in [(n, m) for n, m in model.named_modules() if hasattr(m, "adapters") and "ab" in m.adapters]:
        deltas = {n: layer.adapters[n].delta_weight() for n in ("a", "b", "ab", "b_again")}
        torch.testing.assert_close(deltas["ab"], deltas["a"] + deltas["b"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(deltas["b_again"], deltas["b"], atol=1e-5, rtol=1e-5)
        assert layer.adapters["ab"].r == 8
    lorakit.set_adapter(model, "b")
    expected = logits(model, input_ids)
    lorakit.set_adapter(model, "b_again")
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_combined_adapter_is_ordinary(adapters, tmp_path, input_ids):
    """Added frozen beside the others (the active one stays); saves, loads in lorakit and peft, routes, merges."""
    model = _ours(adapters)
    lorakit.set_adapter(model, "b")
    before = logits(model, input_ids)
    names = lorakit.combine_adapters(model, ["a", "c"], [0.5, 0.5], "ac", method="svd", svd_rank=6)
    assert lorakit.active_adapter(model) == "b" and lorakit.list_adapters(model)[-1] == "ac"
    assert "model.embed_tokens" in names and lorakit.trainable_parameters(model)[0] == 0
    torch.testing.assert_close(logits(model, input_ids), before)
    lorakit.set_adapter(model, "ac")
    combined = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path / "ac", adapter_name="ac")
    reloaded = tiny_llama()
    lorakit.load_adapter(reloaded, tmp_path / "ac")
    torch.testing.assert_close(logits(reloaded, input_ids), combined, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(peft_from_pretrained(tiny_llama(), tmp_path / "ac"), input_ids), combined,
                               atol=1e-5, rtol=1e-5)
    with lorakit.route(model, ["ac", "b", None]):
        routed = logits(model, input_ids)
    torch.testing.assert_close(routed[0], combined[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed[1], before[1], atol=1e-5, rtol=1e-5)
    merged = lorakit.merge_and_unload(model, "ac")
    torch.testing.assert_close(logits(merged, input_ids), combined, atol=1e-4, rtol=1e-4)


def test_rslora_and_mixed_ranks_combine_exactly(input_ids):
    """rsLoRA scalings and different ranks per adapter: cat and svd keep Σ w_i ΔW_i (peft would rescale rsLoRA)."""
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj"]), "x")
    lorakit.inject(model, lorakit.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "o_proj"]), "y")
    randomize_lora_b(model)
    lorakit.combine_adapters(model, ["x", "y"], [2.0, -1.0], "cat", method="cat")
    lorakit.combine_adapters(model, ["x", "y"], [2.0, -1.0], "svd", method="svd", svd_rank=6)
    q = model.model.layers[0].self_attn.q_proj
    expected = 2 * q.adapters["x"].delta_weight() - q.adapters["y"].delta_weight()
    for name in ("cat", "svd"):
        torch.testing.assert_close(q.adapters[name].delta_weight(), expected, atol=1e-5, rtol=1e-5)
    assert q.adapters["cat"].r == 6 and model.model.layers[0].self_attn.o_proj.adapters["cat"].r == 2
    with pytest.raises(InputError, match="equal rank.*q_proj"):
        lorakit.combine_adapters(model, ["x", "y"], [1.0, 1.0], "lin", method="linear")
    assert "lin" not in lorakit.list_adapters(model)


def test_conv1d_svd_methods_equal_peft(tmp_path, input_ids, monkeypatch):
    """GPT-2's Conv1D stores W as (in, out); DARE's drop and the SVD follow peft's layout there too."""
    with warnings.catch_warnings(action="ignore"):
        theirs = peft.get_peft_model(tiny_gpt2(), peft.LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False),
                                     adapter_name="p")
        theirs.add_adapter("q", peft.LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    theirs.save_pretrained(tmp_path)
    ours = tiny_gpt2()
    for name in ("p", "q"):
        lorakit.load_adapter(ours, tmp_path / name, adapter_name=name)
    shared = SharedBernoulli()
    monkeypatch.setattr(torch, "bernoulli", shared)
    for method in ("ties_svd", "dare_ties_svd"):
        shared.generator.manual_seed(3)
        theirs.add_weighted_adapter(["p", "q"], [1.0, 0.5], method, combination_type=method, density=0.6)
        theirs.set_adapter(method)
        shared.generator.manual_seed(3)
        lorakit.combine_adapters(ours, ["p", "q"], [1.0, 0.5], method, method=method, density=0.6)
        lorakit.set_adapter(ours, method)
        torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)


def test_cli_combines_adapter_dirs_like_the_api(adapters, tmp_path, input_ids, capsys):
    out = tmp_path / "ties"
    argv = ["combine", str(adapters / "a"), str(adapters / "b"), str(adapters / "c"), str(out),
            "--weights", "0.7", "-0.4", "1.2", "--method", "ties_svd", "--density", "0.5", "--svd-rank", "3"]
    assert main(argv) == 0
    assert "ties_svd of 3 adapters" in capsys.readouterr().out
    model = _ours(adapters)
    lorakit.combine_adapters(model, list(ADAPTERS), WEIGHTS, "api", method="ties_svd", density=0.5, svd_rank=3)
    lorakit.set_adapter(model, "api")
    expected = logits(model, input_ids)
    torch.testing.assert_close(logits(peft_from_pretrained(tiny_llama(), out), input_ids), expected,
                               atol=1e-5, rtol=1e-5)
    assert main(argv) == 2  # OUT_DIR is not empty now
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--seed", "0"]) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="ties"), "needs density"),
    (dict(method="cat", density=0.5), "density applies to the pruning methods"),
    (dict(method="nope"), "method 'nope'"),
    (dict(method="cat", weights=[1.0]), "1 weights for 2 adapters"),
    (dict(method="cat", names=["a", "zz"]), "no adapter named 'zz'"),
    (dict(method="cat", new="b"), "already exists"),
    (dict(method="svd", svd_rank=0), "svd_rank"),
    (dict(method="ties", density=0.5, majority_sign_method="most"), "majority_sign_method"),
])
def test_bad_arguments_are_input_errors(adapters, kwargs, message):
    model = _ours(adapters)
    names, weights, new = kwargs.pop("names", ["a", "b"]), kwargs.pop("weights", [1.0, 1.0]), kwargs.pop("new", "new")
    with pytest.raises(InputError, match=message):
        lorakit.combine_adapters(model, names, weights, new, **kwargs)
    assert lorakit.list_adapters(model) == list(ADAPTERS)


def test_cli_refuses_adapters_of_different_bases(adapters, tmp_path, capsys):
    model = tiny_llama(hidden_size=48, intermediate_size=64)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"]))
    lorakit.save_adapter(model, tmp_path / "wide")
    assert main(["combine", str(adapters / "a"), str(tmp_path / "wide"), str(tmp_path / "out")]) == 2
    assert "different base models" in capsys.readouterr().err and not (tmp_path / "out").exists()
