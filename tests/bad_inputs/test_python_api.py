"""Bad Python API calls: config classes, inject, routing, merging, quantization, adapter and data I/O."""
import pytest
import torch
from torch import nn

import lorakit
from bad_inputs.harness import Api, check_api, table
from lorakit.data import load_dataset
from helpers import tiny_llama


def adapted(**cfg):
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=2, **({"target_modules": ["q_proj", "v_proj"]} | cfg)))
    return model


def inject(**cfg):
    return lambda env: lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=2, **cfg))


def run_routed(names, rows):
    model = adapted()
    with lorakit.route(model, names):
        model(input_ids=torch.zeros(rows, 3, dtype=torch.long))


def shared_model(env):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(env.assets.model)


def broken_adapter(change):
    """setup: a copy of the shared adapter at {tmp}/adapter, broken by `change(dir)`."""
    return lambda env: change(env.adapter_copy())


def load_broken(env):
    lorakit.load_adapter(shared_model(env), env.tmp / "adapter")


def nan_weights(d):
    from safetensors.torch import load_file, save_file

    t = load_file(d / "adapter_model.safetensors")
    key = sorted(t)[0]
    t[key] = torch.full_like(t[key], float("nan"))
    save_file(t, d / "adapter_model.safetensors")


def cfg(cls, **kw):
    return lambda env: cls(**kw)


L, V, A = lorakit.LoraConfig, lorakit.VeraConfig, lorakit.AdaLoraConfig

ROWS = [
    # config classes
    Api("lora-r-true", cfg(L, r=True), ["r"]),
    Api("lora-r-zero", cfg(L, r=0), ["r"]),
    Api("lora-r-string", cfg(L, r="8"), ["r"]),
    Api("lora-r-float", cfg(L, r=8.0), ["r"]),
    Api("lora-alpha-zero", cfg(L, lora_alpha=0), ["lora_alpha"]),
    Api("lora-alpha-negative", cfg(L, lora_alpha=-8), ["lora_alpha"]),
    Api("lora-alpha-bool", cfg(L, lora_alpha=True), ["lora_alpha"]),
    Api("lora-dropout-nan", cfg(L, lora_dropout=float("nan")), ["lora_dropout"]),
    Api("lora-unknown-field", cfg(L, rank=8), ["rank"]),
    Api("lora-targets-bad-regex", cfg(L, target_modules="q_proj["), ["target_modules", "q_proj["]),
    Api("lora-targets-empty", cfg(L, target_modules=[]), ["target_modules"]),
    Api("lora-targets-tuple-of-ints", cfg(L, target_modules=[1]), ["target_modules"]),
    Api("lora-rank-pattern-zero", cfg(L, rank_pattern={"q_proj": 0}), ["rank_pattern"]),
    Api("lora-alpha-pattern-zero", cfg(L, alpha_pattern={"q_proj": 0}), ["alpha_pattern"]),
    Api("lora-rank-pattern-bad-regex", cfg(L, rank_pattern={"(q": 2}), ["rank_pattern", "(q"]),
    Api("lora-layers-negative", cfg(L, layers_to_transform=[-2]), ["layers_to_transform"]),
    Api("lora-assign-r-true", lambda env: setattr(L(), "r", True), ["r"]),
    Api("vera-r-true", cfg(V, r=True), ["r"]),
    Api("vera-dropout-negative", cfg(V, vera_dropout=-1.0), ["vera_dropout"]),
    Api("adalora-target-above-init", cfg(A, init_r=4, target_r=8), ["target_r"]),
    Api("adalora-init-r-true", cfg(A, init_r=True), ["init_r"]),
    Api("adalora-alpha-negative", cfg(A, lora_alpha=-1), ["lora_alpha"]),
    # inject
    Api("inject-rank-pattern-typo", inject(target_modules=["q_proj"], rank_pattern={"q_projj": 4}),
        ["rank_pattern", "q_projj"]),
    Api("inject-alpha-pattern-typo", inject(target_modules=["q_proj"], alpha_pattern={"v_projj": 4}),
        ["alpha_pattern", "v_projj"]),
    Api("inject-exclude-typo", inject(target_modules="all-linear", exclude_modules=["o_projj"]),
        ["exclude_modules", "o_projj"]),
    Api("inject-exclude-regex-matches-nothing", inject(target_modules="all-linear", exclude_modules=r".*\.o_projj"),
        ["exclude_modules"]),
    Api("inject-layers-99", inject(target_modules=["q_proj"], layers_to_transform=[99]),
        ["layers_to_transform", "99"]),
    Api("inject-layers-pattern-unknown", inject(target_modules=["q_proj"], layers_to_transform=[0],
                                                layers_pattern="blockz"), ["layers_pattern", "blockz"]),
    Api("inject-target-typo", inject(target_modules=["q_proj", "qq_proj"]), ["qq_proj"]),
    Api("inject-not-a-model", lambda env: lorakit.inject("not a model", L()), ["str"]),
    Api("inject-dict-config", lambda env: lorakit.inject(tiny_llama(), {"r": 8}), ["dict"]),
    Api("inject-twice", lambda env: lorakit.inject(adapted(), L(target_modules=["q_proj"])), ["default"]),
    Api("inject-no-candidates", lambda env: lorakit.inject(nn.Sequential(nn.ReLU()), L(target_modules="all-linear")),
        ["target_modules"]),
    # adapters by name, routing
    Api("set-adapter-unknown", lambda env: lorakit.set_adapter(adapted(), "other"), ["other"]),
    Api("delete-adapter-unknown", lambda env: lorakit.delete_adapter(adapted(), "other"), ["other"]),
    Api("route-unknown-name", lambda env: run_routed(["default", "other"], 2), ["other"]),
    Api("route-too-few-names", lambda env: run_routed(["default"], 2), ["1", "2"]),
    Api("route-too-many-names", lambda env: run_routed(["default", None, "default"], 2), ["3", "2"]),
    Api("route-string-not-list", lambda env: run_routed("default", 1), ["str"]),
    Api("route-int-names", lambda env: run_routed([0, 1], 2), ["0"]),
    Api("route-empty", lambda env: run_routed([], 1), ["empty"]),
    # merging, quantization
    Api("merge-without-adapters", lambda env: lorakit.merge(tiny_llama()), ["no adapter"]),
    Api("unmerge-without-adapters", lambda env: lorakit.unmerge(tiny_llama()), ["no adapter"]),
    Api("merge-and-unload-without-adapters", lambda env: lorakit.merge_and_unload(tiny_llama()), ["no adapter"]),
    Api("merge-unknown-adapter", lambda env: lorakit.merge(adapted(), "other"), ["other"]),
    Api("quantize-without-linears", lambda env: lorakit.quantize(nn.Sequential(nn.ReLU(), nn.Tanh())),
        ["nn.Linear"]),
    Api("quantize-unknown-method", lambda env: lorakit.quantize(tiny_llama(), method="nf5"), ["nf5"]),
    Api("quantize-not-a-model", lambda env: lorakit.quantize("model"), ["str"]),
    # adapter I/O
    Api("save-adapter-to-file", lambda env: lorakit.save_adapter(adapted(), env.tmp / "taken"), ["{tmp}/taken"],
        setup=lambda env: env.write("taken", "x")),
    Api("save-adapter-under-file", lambda env: lorakit.save_adapter(adapted(), env.tmp / "taken" / "a"),
        ["{tmp}/taken"], setup=lambda env: env.write("taken", "x")),
    Api("save-adapter-without-adapter", lambda env: lorakit.save_adapter(tiny_llama(), env.tmp / "a"),
        ["default"]),
    Api("save-adapter-unknown-name", lambda env: lorakit.save_adapter(adapted(), env.tmp / "a", adapter_name="x"),
        ["'x'"]),
    Api("load-adapter-missing", lambda env: lorakit.load_adapter(tiny_llama(), env.tmp / "nope"), ["{tmp}/nope"]),
    Api("load-adapter-config-list", load_broken, ["adapter_config.json"],
        setup=broken_adapter(lambda d: (d / "adapter_config.json").write_text("[]"))),
    Api("load-adapter-nan", load_broken, ["adapter_model.safetensors", "NaN"], setup=broken_adapter(nan_weights)),
    Api("load-adapter-bin-only", load_broken, ["allow_pickle"], setup=broken_adapter(lambda d: (
        torch.save({}, d / "adapter_model.bin"), (d / "adapter_model.safetensors").unlink()))),
    Api("load-adapter-twice", lambda env: [lorakit.load_adapter(m, env.assets.adapter)
                                           for m in [shared_model(env)] for _ in range(2)], ["default"]),
    Api("read-config-latin1", lambda env: lorakit.read_config(env.tmp / "adapter"), ["adapter_config.json", "byte 7"],
        setup=broken_adapter(lambda d: (d / "adapter_config.json").write_bytes('{"r": "\xe9"}'.encode("latin-1")))),
    # data and config loading
    Api("load-dataset-latin1", lambda env: load_dataset(env.tmp / "d.jsonl"), ["{tmp}/d.jsonl", "byte 13"],
        setup=lambda env: env.write("d.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"))),
    Api("load-config-override-yaml-error", lambda env: _load_config(["lora.target_modules=[q"]),
        ["lora.target_modules"]),
    Api("load-config-empty-segment", lambda env: _load_config(["lora..r=2"]), ["lora..r"]),
]


def _load_config(overrides):
    from lorakit.train.config import RunConfig
    from lorakit.yamlconfig import load_config

    return load_config(RunConfig, None, overrides, base={"data": {"train": "x.jsonl"}})


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_api_call(row, env):
    check_api(row, env)
