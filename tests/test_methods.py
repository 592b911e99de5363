"""The method registry and the adapter protocol: a method is one record; nothing else names it."""
import ast
from pathlib import Path
from typing import ClassVar, Optional

import pytest
import torch
from pydantic import Field
from torch import nn

import lorakit
from helpers import logits, tiny_llama
from lorakit import methods
from lorakit.config import PeftFormatConfig, TargetSpec
from lorakit.targets import wrap_targets
from lorakit.tuners.base import Kind, LayerAdapter, Method

SRC = Path(lorakit.__file__).parent


def test_every_method_is_consistent_and_has_a_trainer_section():
    from lorakit.train.config import RunConfig

    for name, m in methods.METHODS.items():
        assert m.name == name and m.config.PEFT_TYPE == m.peft_type
        assert methods.for_peft_type(m.peft_type) is m and methods.for_config(m.config()) is m
        assert RunConfig.model_fields[name].annotation is m.config
        assert name in RunConfig.model_fields["method"].annotation.__args__
    with pytest.raises(TypeError, match="not the config of a registered method"):
        methods.for_config(object())


# ---- a whole method in a few lines: the recipe of tuners/base.py, followed from a test --------------
class ShiftConfig(PeftFormatConfig):
    PEFT_TYPE: ClassVar[str] = "LORAKIT_TEST_SHIFT"
    target_modules: TargetSpec = None
    modules_to_save: Optional[list[str]] = None
    task_type: Optional[str] = None
    base_model_name_or_path: Optional[str] = None
    inference_mode: bool = False
    init_zero: bool = Field(True)


class ShiftAdapter(LayerAdapter):
    """y + shift: a learned bias per output (ΔW = 0; merging adds to the base bias)."""

    def __init__(self, out_features: int, zero: bool):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(out_features) if zero else torch.randn(out_features))

    def forward(self, layer, x, y):
        return y + self.shift

    def merged_weight(self, layer, w):
        return w

    def unmerged_weight(self, layer, w):
        return w

    def merged_bias(self, b):
        return b + self.shift.float()

    def unmerged_bias(self, b):
        return b - self.shift.float()

    def saved_tensors(self, layer):
        return {"shift": self.shift}


def _build(model, config, adapter_name):
    wrappers = wrap_targets(model, config)
    for w in wrappers.values():
        w.add(adapter_name, ShiftAdapter(w.out_features, config.init_zero))
    return list(wrappers)


SHIFT = Method(name="shift", config=ShiftConfig, peft_type="LORAKIT_TEST_SHIFT", kind=Kind.LAYERS, build=_build,
               summary=lambda c: "shift", load_overrides={"init_zero": True})


@pytest.fixture
def shift_registered(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "shift", SHIFT)


def test_a_new_method_needs_only_its_record(shift_registered, tmp_path, input_ids):
    """inject, save/load, set_adapter, disable_adapters, merge and trainable marking all work for a
    method that only its own record describes."""
    model = tiny_llama(attention_bias=True)
    base = logits(model, input_ids)
    lorakit.inject(model, ShiftConfig(target_modules=["q_proj", "v_proj"]), "s")
    torch.testing.assert_close(logits(model, input_ids), base)  # fresh: identity
    with torch.no_grad():
        for _, w in lorakit.tuners.layers.layer_wrappers(model):
            w.adapters["s"].shift.normal_()
    shifted = logits(model, input_ids)
    assert not torch.allclose(shifted, base)
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {"shift"}
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, input_ids), base)
    lorakit.save_adapter(model, tmp_path, adapter_name="s")
    fresh = tiny_llama(attention_bias=True)
    lorakit.load_adapter(fresh, tmp_path, adapter_name="s")
    torch.testing.assert_close(logits(fresh, input_ids), shifted)
    lorakit.merge(fresh)
    torch.testing.assert_close(logits(fresh, input_ids), shifted)
    plain = lorakit.merge_and_unload(fresh)
    torch.testing.assert_close(logits(plain, input_ids), shifted)
    with pytest.raises(NotImplementedError, match="plain LoRA"):
        with lorakit.route(model, ["s", None]):
            pass


def test_a_failed_build_leaves_the_model_as_it_was():
    model = tiny_llama()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(TypeError, match="embeddings"):
        lorakit.inject(model, lorakit.VeraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
    assert {n: type(m) for n, m in model.named_modules()} == before and lorakit.list_adapters(model) == []


def _module_imports(path: Path) -> set[str]:
    """lorakit modules imported by `path`, at module level or inside functions (a deferred import is a
    cycle all the same)."""
    tree = ast.parse(path.read_text())
    package = ".".join(("lorakit",) + path.relative_to(SRC).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            if mod.startswith("lorakit"):
                out.update(f"{mod}.{a.name}" for a in node.names)  # a submodule, or a name (then not in the graph)
                if node.module is not None:  # `from . import x` does not run the package's __init__ for its names
                    out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lorakit"))
    return out


def test_state_is_a_leaf_and_adapter_modules_import_no_cycle():
    files = {".".join(("lorakit",) + p.relative_to(SRC).with_suffix("").parts): p for p in SRC.rglob("*.py")}
    files = {k.removesuffix(".__init__"): p for k, p in files.items()}
    graph = {m: {d for d in _module_imports(p) if d in files and d != m} for m, p in files.items()}
    state_deps = graph["lorakit.state"]
    leaves = ("lorakit.config", "lorakit.errors", "lorakit.tuners")  # (errors imports nothing)
    assert all(d.startswith("lorakit.tuners.") or d in leaves for d in state_deps)

    def reaches(a, b, seen=()):
        return b in graph[a] or any(reaches(n, b, seen + (a,)) for n in graph[a] if n not in seen)

    core = ["lorakit.inject", "lorakit.routing", "lorakit.state", "lorakit.targets", "lorakit.io",
            *(m for m in files if m.startswith("lorakit.tuners."))]
    cycles = [(a, b) for a in core for b in core if a < b and reaches(a, b) and reaches(b, a)]
    assert cycles == []
    assert reaches("lorakit.inject", "lorakit.state") and not reaches("lorakit.state", "lorakit.inject")


# ---- a virtual-token-kind method: its own holder added to the model, a top-level on-disk key ----------
class NudgeConfig(PeftFormatConfig):
    PEFT_TYPE: ClassVar[str] = "LORAKIT_TEST_NUDGE"
    modules_to_save: Optional[list[str]] = None
    task_type: Optional[str] = None
    base_model_name_or_path: Optional[str] = None
    inference_mode: bool = False


class NudgeHolder(lorakit.tuners.base.AdapterHolder):
    """Adds the active adapter's vector to every input embedding (a stand-in for virtual tokens)."""

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.__dict__["hook"] = embeddings.register_forward_hook(self._nudge)

    def _nudge(self, module, args, out):
        return out if self.active is None else out + self.active.vector

    def unwrap(self, keep_trained):
        self.hook.remove()
        return None


class Nudge(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.vector = nn.Parameter(torch.zeros(dim))


def _build_nudge(model, config, adapter_name):
    holder = getattr(model, "nudge", None) or NudgeHolder(model.get_input_embeddings())
    model.nudge = holder
    holder.add(adapter_name, Nudge(model.config.hidden_size))
    return ["nudge"]


NUDGE = Method(name="nudge", config=NudgeConfig, peft_type="LORAKIT_TEST_NUDGE", kind=Kind.VIRTUAL_TOKENS,
               build=_build_nudge, summary=lambda c: "nudge",
               model_tensors=lambda model, name: {"nudge_vector": model.nudge.adapters[name].vector})


def test_a_method_with_its_own_holder_and_keys(monkeypatch, tmp_path, input_ids):
    monkeypatch.setitem(methods.METHODS, "nudge", NUDGE)
    model = tiny_llama()
    base = logits(model, input_ids)
    lorakit.inject(model, NudgeConfig(), "n")
    with torch.no_grad():
        model.nudge.adapters["n"].vector.normal_()
    nudged = logits(model, input_ids)
    assert not torch.allclose(nudged, base) and [n for n, p in model.named_parameters() if p.requires_grad] == \
        ["nudge.adapters.n.vector"]
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, input_ids), base)
    with pytest.raises(NotImplementedError, match="virtual tokens"):
        lorakit.merge(model)
    with pytest.raises(NotImplementedError, match="virtual-token"):
        with lorakit.route(model, ["n", None]):
            pass
    lorakit.save_adapter(model, tmp_path, adapter_name="n")
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "adapter_model.safetensors")) == {"nudge_vector"}
    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), nudged)
    lorakit.delete_adapter(fresh, "default")
    assert not hasattr(fresh, "nudge")
    torch.testing.assert_close(logits(fresh, input_ids), base)  # the hook went with the holder
