import pytest
import torch

import lorakit
from lorakit.errors import InputError, UnsupportedOperation
from lorakit.state import holders
from lorakit import routing
from helpers import MODEL_FACTORIES
from helpers import logits, randomize_lora_b

TARGETS = {"llama": ["q_proj", "v_proj", "down_proj", "embed_tokens"], "gpt2": ["c_attn", "c_fc"], "bert": ["query", "value"]}


def _three_adapters(arch):
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=TARGETS[arch]), "a")
    lorakit.inject(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS[arch][:1]), "b")
    lorakit.inject(model, lorakit.LoraConfig(r=8, use_rslora=True, target_modules=TARGETS[arch]), "c")
    randomize_lora_b(model)
    return model


def test_set_adapter_switches_and_disable_restores_base(llama, input_ids):
    base = logits(llama, input_ids)
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"]), "a")
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["v_proj"]), "b")
    randomize_lora_b(llama)
    assert lorakit.active_adapter(llama) == "b" and lorakit.list_adapters(llama) == ["a", "b"]
    out_b = logits(llama, input_ids)
    lorakit.set_adapter(llama, "a")
    out_a = logits(llama, input_ids)
    assert not torch.allclose(out_a, out_b)
    with lorakit.disable_adapters(llama):
        torch.testing.assert_close(logits(llama, input_ids), base)
    torch.testing.assert_close(logits(llama, input_ids), out_a)
    with pytest.raises(KeyError, match="no adapter named 'c'"):
        lorakit.set_adapter(llama, "c")


def test_delete_adapter_restores_plain_modules(llama, input_ids):
    base = logits(llama, input_ids)
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"]), "a")
    randomize_lora_b(llama)
    lorakit.delete_adapter(llama, "a")
    assert lorakit.list_adapters(llama) == []
    assert isinstance(llama.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    torch.testing.assert_close(logits(llama, input_ids), base)


@pytest.mark.parametrize("path", ["gather", "every_adapter"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_route_rows_equal_each_row_alone(arch, path, monkeypatch):
    """Both ways of computing per-row updates: gathered factors, and every adapter then a mask."""
    monkeypatch.setattr(routing, "DENSE_MAX", 0 if path == "gather" else 10**9)
    model = _three_adapters(arch)
    torch.manual_seed(3)
    ids = torch.randint(0, 128, (5, 9))
    names = ["a", None, "c", "b", "a"]
    with lorakit.route(model, names):
        mixed = logits(model, ids)
    for i, name in enumerate(names):
        if name is None:
            with lorakit.disable_adapters(model):
                alone = logits(model, ids[i : i + 1])
        else:
            lorakit.set_adapter(model, name)
            alone = logits(model, ids[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_route_works_under_generate():
    model = _three_adapters("llama")
    ids = torch.randint(1, 128, (3, 5))
    names = ["c", None, "a"]
    with lorakit.route(model, names):
        mixed = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for i, name in enumerate(names):
        if name is None:
            with lorakit.disable_adapters(model):
                alone = model.generate(ids[i : i + 1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        else:
            lorakit.set_adapter(model, name)
            alone = model.generate(ids[i : i + 1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(mixed[i : i + 1], alone)


def test_route_follows_generate_expanding_rows_and_refuses_other_batch_sizes():
    model = _three_adapters("llama")
    ids = torch.randint(1, 128, (2, 5))
    names = ["c", "a"]
    with lorakit.route(model, names):
        out = model.generate(ids, max_new_tokens=3, do_sample=True, num_return_sequences=2, pad_token_id=0)
        assert out.shape[0] == 4
        with pytest.raises(InputError, match="2 adapter names for a batch of 3 rows"):
            model(input_ids=torch.randint(1, 128, (3, 5)))
    model(input_ids=torch.randint(1, 128, (3, 5)))  # (the check ends with the block)


def test_route_rejects_unknown_name_and_merged_state(llama):
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"]), "a")
    with pytest.raises(KeyError, match="'zz'"):
        with lorakit.route(llama, ["a", "zz"]):
            pass
    lorakit.merge(llama)
    with pytest.raises(RuntimeError, match="merged"):
        with lorakit.route(llama, ["a", None]):
            pass


def _routed_equals_alone(model, ids, names):
    with lorakit.route(model, names):
        mixed = logits(model, ids)
    for i, name in enumerate(names):
        lorakit.set_adapter(model, name)
        torch.testing.assert_close(mixed[i : i + 1], logits(model, ids[i : i + 1]), atol=1e-5, rtol=1e-5)


def test_route_follows_adapter_changes_between_blocks():
    """The stacked factors are cached across route() blocks; in-place edits, deletes and re-adds show."""
    model = _three_adapters("llama")
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(4))
    names = ["a", "c", "b"]
    _routed_equals_alone(model, ids, names)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.adapters["c"].lora_B.mul_(-3)
    _routed_equals_alone(model, ids, names)
    lorakit.delete_adapter(model, "b")
    lorakit.inject(model, lorakit.LoraConfig(r=6, target_modules=["v_proj"]), "b")
    randomize_lora_b(model)
    _routed_equals_alone(model, ids, names)


def test_route_skips_other_kinds_of_adapter_on_the_same_layers():
    model = MODEL_FACTORIES["llama"]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"]), "a")
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"], use_dora=True), "d")
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), "b")
    randomize_lora_b(model)
    _routed_equals_alone(model, torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(5)), ["b", "a"])
    with pytest.raises(NotImplementedError, match="plain LoRA"):
        with lorakit.route(model, ["d", "a"]):
            pass


def test_stacking_adapters_that_cannot_stack_is_refused_and_switches_nothing():
    model = MODEL_FACTORIES["llama"]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["model.norm"]), "a")
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["model.norm"]), "b")
    lorakit.set_adapter(model, "a")
    with pytest.raises(UnsupportedOperation, match="one adapter at a time"):
        lorakit.set_adapter(model, ["a", "b"])
    assert lorakit.active_adapter(model) == "a"
    assert all(h.active_name in (None, "a") for _, h in holders(model))
