import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES
from lorakit.tuners.lora import LoraEmbedding, LoraWrapper, ModulesToSave


def _wrapped(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, LoraWrapper))


def test_list_targets_match_exact_or_suffix(llama):
    names = lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj", "model.layers.1.mlp.up_proj"]))
    assert sorted(names) == _wrapped(llama) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.q_proj"]


def test_regex_target_is_a_full_match(llama):
    names = lorakit.inject(llama, lorakit.LoraConfig(target_modules=r".*\.(q|v)_proj"))
    assert sorted(n.rsplit(".", 1)[1] for n in names) == ["q_proj", "q_proj", "v_proj", "v_proj"]
    with pytest.raises(ValueError, match="matched no module"):
        lorakit.inject(llama, lorakit.LoraConfig(target_modules="q_proj"), adapter_name="b")  # not a full match


@pytest.mark.parametrize("arch,expected", [("llama", 14), ("gpt2", 8), ("bert", 2 * 6 + 1)])
def test_all_linear_skips_output_head(arch, expected):
    model = MODEL_FACTORIES[arch]()
    cfg = lorakit.LoraConfig(target_modules="all-linear", modules_to_save=["classifier"] if arch == "bert" else None)
    names = lorakit.inject(model, cfg)
    assert len(names) == expected
    assert not any(n.endswith(("lm_head", "classifier")) for n in names)


def test_preset_used_when_targets_omitted(gpt2):
    names = lorakit.inject(gpt2, lorakit.LoraConfig())
    assert {n.rsplit(".", 1)[1] for n in names} == {"c_attn", "c_proj", "c_fc"}


def test_exclude_and_layers_to_transform(llama):
    cfg = lorakit.LoraConfig(target_modules="all-linear", exclude_modules=["k_proj"], layers_to_transform=[1])
    names = lorakit.inject(llama, cfg)
    assert all(".layers.1." in n for n in names) and not any(n.endswith("k_proj") for n in names)
    assert len(names) == 6


def test_layers_pattern_restricts_to_named_list(gpt2):
    names = lorakit.inject(gpt2, lorakit.LoraConfig(target_modules=["c_attn"], layers_to_transform=0, layers_pattern="h"))
    assert names == ["transformer.h.0.attn.c_attn"]


def test_rank_and_alpha_patterns(llama):
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             rank_pattern={"v_proj": 2}, alpha_pattern={r"model\.layers\.0\.self_attn\.q_proj": 32})
    lorakit.inject(llama, cfg)
    q0 = llama.model.layers[0].self_attn.q_proj.adapters["default"]
    q1 = llama.model.layers[1].self_attn.q_proj.adapters["default"]
    v1 = llama.model.layers[1].self_attn.v_proj.adapters["default"]
    assert (q0.r, q0.alpha, q1.r, q1.alpha, v1.r) == (4, 32, 4, 8, 2)


def test_no_match_error_lists_candidates_and_preset(llama):
    with pytest.raises(ValueError) as e:
        lorakit.inject(llama, lorakit.LoraConfig(target_modules=["query"]))
    msg = str(e.value)
    assert "query" in msg and "q_proj" in msg and "suggested for llama" in msg


def test_partial_match_names_the_typo(llama):
    with pytest.raises(ValueError, match="matched no module: v_porj"):
        lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj", "v_porj"]))
    assert _wrapped(llama) == []  # nothing half-done


def test_only_adapter_params_and_modules_to_save_train(bert):
    lorakit.inject(bert, lorakit.LoraConfig(target_modules=["query", "value"], modules_to_save=["classifier"]))
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".copies.default." in n for n in trainable)
    assert any("classifier.copies.default" in n for n in trainable)
    t, total = lorakit.trainable_parameters(bert)
    assert t == sum(p.numel() for n, p in bert.named_parameters() if p.requires_grad) and total > t
    assert "trainable%" in lorakit.describe_trainable(bert)


@pytest.mark.parametrize("mode,count", [("none", 0), ("lora_only", 4), ("all", None)])
def test_bias_modes(bert, mode, count):
    lorakit.inject(bert, lorakit.LoraConfig(target_modules=["query", "value"], bias=mode))
    biases = [n for n, p in bert.named_parameters() if p.requires_grad and n.endswith("bias")]
    if count is None:
        assert len(biases) > 4
    else:
        assert len(biases) == count


def test_embedding_target(llama):
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["embed_tokens", "q_proj"]))
    assert isinstance(llama.model.embed_tokens, LoraEmbedding)


def test_modules_to_save_unmatched_is_an_error(llama):
    with pytest.raises(ValueError, match="modules_to_save entries matched no module: classifer"):
        lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"], modules_to_save=["classifer"]))


def test_second_adapter_may_differ_in_rank_and_targets(llama):
    lorakit.inject(llama, lorakit.LoraConfig(r=4, target_modules=["q_proj"]), "a")
    lorakit.inject(llama, lorakit.LoraConfig(r=2, target_modules=["q_proj", "down_proj"]), "b")
    q = llama.model.layers[0].self_attn.q_proj
    assert set(q.adapters) == {"a", "b"} and q.adapters["b"].r == 2
    assert set(llama.model.layers[0].mlp.down_proj.adapters) == {"b"}
    with pytest.raises(ValueError, match="already exists"):
        lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"]), "a")


def test_modules_to_save_wrapper_uses_trained_copy(bert):
    lorakit.inject(bert, lorakit.LoraConfig(target_modules=["query"], modules_to_save=["classifier"]))
    assert isinstance(bert.classifier, ModulesToSave)
    with torch.no_grad():
        bert.classifier.copies["default"].weight.add_(1.0)
    assert not torch.equal(bert.classifier.copies["default"].weight, bert.classifier.original.weight)
