"""Whole-model merging from mergekit recipes: every tensor against mergekit itself, streaming output, validation."""
import json
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lorakit
from helpers import logits, randomize_lora_b, tiny_llama
from lorakit.cli import main
from lorakit.errors import InputError
from lorakit.merge import merge_models
from lorakit.merge.recipe import Recipe, RecipeError

F32 = {"dtype": "float32"}


def _perturbed(path, seed, scale=0.05, **overrides):
    model = tiny_llama(**overrides)
    torch.manual_seed(seed)
    if seed:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny 2-layer Llamas: m0 the base, m1 and m2 fine-tuned-like perturbations of it."""
    root = tmp_path_factory.mktemp("merge-inputs")
    return [str(_perturbed(root / f"m{i}", i)) for i in range(3)]


def recipes(m):
    return {
        "linear": {"merge_method": "linear", "models": [
            {"model": m[0], "parameters": {"weight": 0.2}}, {"model": m[1], "parameters": {"weight": 0.5}},
            {"model": m[2], "parameters": {"weight": [0.1, 0.9]}}], **F32},
        "slerp": {"merge_method": "slerp", "base_model": m[0], "models": [{"model": m[0]}, {"model": m[1]}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"filter": "mlp", "value": [1, 0.3]},
                                       {"value": 0.4}]}, **F32},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": m[0], "models": [
            {"model": m[1], "parameters": {"weight": 0.8}}, {"model": m[2], "parameters": {"weight": -0.5}}],
            "parameters": {"lambda": 0.9}, **F32},
        "ties": {"merge_method": "ties", "base_model": m[0], "models": [
            {"model": m[1], "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": m[2], "parameters": {"weight": [0.2, 0.9], "density": [{"filter": "mlp", "value": 0.7},
                                                                             {"value": 0.3}]}}],
            "parameters": {"normalize": True, "int8_mask": True}, **F32},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": m[0], "models": [
            {"model": m[1], "parameters": {"weight": 1.0, "density": 0.8, "gamma": 0.05}},
            {"model": m[2], "parameters": {"weight": 0.5, "density": 0.9}}], **F32},
        "slerp_slices": {"merge_method": "slerp", "base_model": m[1], "slices": [  # the usual published form
            {"sources": [{"model": m[1], "layer_range": [0, 2]}, {"model": m[2], "layer_range": [0, 2]}]}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                 {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}, **F32},
        "slices": {"merge_method": "linear", "slices": [
            {"sources": [{"model": m[0], "layer_range": [0, 2], "parameters": {"weight": 1.0}},
                         {"model": m[1], "layer_range": [0, 2], "parameters": {"weight": 3.0}}]},
            {"sources": [{"model": m[1], "layer_range": [1, 2], "parameters": {"weight": 1.0}},
                         {"model": m[2], "layer_range": [1, 2], "parameters": {"weight": 1.0}}]}], **F32},
    }


@pytest.fixture(scope="module")
def mergekit_outputs(models, tmp_path_factory):
    """mergekit's own output for each recipe (the oracle), run in this process."""
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    root = tmp_path_factory.mktemp("mergekit")
    options = MergeOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True, random_seed=0)
    with warnings.catch_warnings(action="ignore"):
        for name, recipe in recipes(models).items():
            run_merge(MergeConfiguration.model_validate(recipe), str(root / name), options=options)
        run_merge(MergeConfiguration.model_validate(_dare(models)), str(root / "dare"), options=options)
    return root


def _dare(m):
    return {"merge_method": "dare_linear", "base_model": m[0],
            "models": [{"model": m[1], "parameters": {"weight": 1.0, "density": 0.3}}], **F32}


@pytest.mark.parametrize("name", ["linear", "slerp", "slerp_slices", "task_arithmetic", "ties", "breadcrumbs",
                                  "slices"])
def test_every_tensor_equals_mergekit(name, models, mergekit_outputs, tmp_path):
    stats = merge_models(Recipe.model_validate(recipes(models)[name]), tmp_path / name)
    ours, theirs = load_file(tmp_path / name / "model.safetensors"), load_file(mergekit_outputs / name / "model.safetensors")
    assert sorted(ours) == sorted(theirs) and stats["tensors"] == len(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-5, msg=key)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["num_hidden_layers"] == json.loads((mergekit_outputs / name / "config.json").read_text())["num_hidden_layers"]


def test_dare_matches_mergekit_in_distribution(models, mergekit_outputs, tmp_path):
    """DARE's drop is random: both keep ≈ density of each delta and rescale it to the original L1 norm."""
    merge_models(Recipe.model_validate(_dare(models)), tmp_path / "dare", seed=3)
    base, tuned = load_file(f"{models[0]}/model.safetensors"), load_file(f"{models[1]}/model.safetensors")
    for out in (tmp_path / "dare", mergekit_outputs / "dare"):
        merged = load_file(out / "model.safetensors")
        key = "model.embed_tokens.weight"  # 4096 entries
        delta, kept = tuned[key] - base[key], merged[key] - base[key]
        mask = kept != 0
        assert 0.26 < mask.float().mean() < 0.34
        scale = kept[mask] / delta[mask]
        torch.testing.assert_close(scale, torch.full_like(scale, float(delta.abs().sum() / delta[mask].abs().sum())),
                                   atol=1e-4, rtol=1e-4)
    merge_models(Recipe.model_validate(_dare(models)), tmp_path / "again", seed=3)
    assert load_file(tmp_path / "again" / "model.safetensors")[key].equal(
        load_file(tmp_path / "dare" / "model.safetensors")[key])  # seeded: reproducible


def test_sharded_output_loads_in_transformers(models, tmp_path, input_ids):
    from transformers import AutoModelForCausalLM

    recipe = Recipe.model_validate(recipes(models)["ties"])
    merge_models(recipe, tmp_path / "one")
    stats = merge_models(recipe, tmp_path / "sharded", max_shard_bytes=20_000)
    assert stats["shards"] > 3 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").eval()
    sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    torch.testing.assert_close(logits(sharded, input_ids), logits(one, input_ids))
    assert (tmp_path / "sharded" / "lorakit_merge.yaml").is_file()


def test_base_plus_adapter_applies_the_lora(models, tmp_path, input_ids):
    """`model: BASE+ADAPTER_DIR` is the base with the adapter merged (rsLoRA, rank pattern, embedding LoRA)."""
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"v_proj": 2},
                                             target_modules=["q_proj", "v_proj", "embed_tokens"]))
    randomize_lora_b(model)
    lorakit.save_adapter(model, tmp_path / "adapter")
    expected = logits(model, input_ids)
    recipe = {"merge_method": "task_arithmetic", "base_model": models[0],
              "models": [{"model": f"{models[0]}+{tmp_path / 'adapter'}", "parameters": {"weight": 1.0}}], **F32}
    merge_models(Recipe.model_validate(recipe), tmp_path / "out")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_dora_adapter_is_merged_through_a_temporary_model(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    randomize_lora_b(model)
    lorakit.save_adapter(model, tmp_path / "dora", base_model_name_or_path=str(tiny_lm_dir))
    expected = lorakit.merge_and_unload(model).state_dict()
    recipe = {"merge_method": "linear", "models": [{"model": f"{tiny_lm_dir}+{tmp_path / 'dora'}",
                                                     "parameters": {"weight": 1.0}}], **F32}
    merge_models(Recipe.model_validate(recipe), tmp_path / "out")
    merged = load_file(tmp_path / "out" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[key], expected[key], atol=1e-6, rtol=1e-6)


def _write(tmp_path, recipe, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(merge_methd="ties"), r"recipe.yaml:\d+: merge_methd: unknown key"),
    (lambda r: r.update(merge_method="frankenstein"), r"recipe.yaml:1: merge_method: unknown method 'frankenstein'"),
    (lambda r: r["models"][1]["parameters"].update(wieght=1), r"recipe.yaml:\d+: models.1.parameters.wieght: unknown parameter"),
    (lambda r: r["models"][0]["parameters"].update(normalize=True), r"models.0.parameters.normalize: normalize applies to the whole"),
    (lambda r: r["models"][0]["parameters"].update(density="lots"), r"models.0.parameters.density: expected a number"),
    (lambda r: r.pop("base_model"), r"base_model: ties needs a base_model"),
    (lambda r: r["models"][1].update(model=r["models"][0]["model"]), r"models.1.model: .* is listed twice"),
    (lambda r: r.update(tokenizer_source="union"), r"tokenizer_source: 'union'"),
    (lambda r: r.update(slices=[]), r"slices"),
])
def test_bad_recipes_name_the_key(models, tmp_path, edit, message):
    recipe = json.loads(json.dumps(recipes(models)["ties"]))
    edit(recipe)
    with pytest.raises(InputError, match=message):
        merge_models(_write(tmp_path, recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_problems_found_before_writing(models, tmp_path):
    wide = str(_perturbed(tmp_path / "wide", 4, intermediate_size=48))
    bad = {
        r"models.0: tensor model.layers.0.mlp.down_proj.weight has shape \(32, 48\)": {"merge_method": "task_arithmetic", "base_model": models[0],
                                "models": [{"model": wide, "parameters": {"weight": 1.0}}]},
        "models.0.model: .*missing.*not a local model": {"merge_method": "linear",
                                                          "models": [{"model": str(tmp_path / "missing"),
                                                                      "parameters": {"weight": 1.0}}]},
        "models.1: parameter weight is not set": {"merge_method": "linear", "models": [
            {"model": models[0], "parameters": {"weight": 1.0}},
            {"model": models[1], "parameters": {"weight": [{"filter": "mlp", "value": 1.0}]}}]},
        "slerp merges the base with exactly 1": {"merge_method": "slerp", "base_model": models[0],
                                                 "models": [{"model": m} for m in models], "parameters": {"t": 0.5}},
        "density.*expected 0 to 1": {"merge_method": "ties", "base_model": models[0],
                                     "models": [{"model": models[1], "parameters": {"weight": 1, "density": 1.5}}]},
    }
    for message, recipe in bad.items():
        with pytest.raises(InputError, match=message):
            merge_models(_write(tmp_path, recipe), tmp_path / "out")
        assert not (tmp_path / "out").exists(), message


def test_cli_refuses_a_non_empty_output_unless_overwrite(models, tmp_path, capsys):
    recipe = _write(tmp_path, recipes(models)["task_arithmetic"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["merge-models", recipe, str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not empty" in err and (out / "keep.txt").is_file()
    assert main(["merge-models", recipe, str(out), "--overwrite", "--max-shard-size", "50KB"]) == 0
    assert "merged model written" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and (out / "model.safetensors.index.json").is_file()
    assert main(["merge-models", _write(tmp_path, "merge_method: [", "broken.yaml"), str(tmp_path / "x")]) == 2
    assert "broken.yaml:1: invalid YAML" in capsys.readouterr().err
