"""Bad adapter directories given to eval, generate, chat, merge, combine and serve (`--adapter DIR`,
`merge DIR OUT`, `combine DIR GOOD OUT`, `serve --adapter a=DIR`)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bad_inputs.harness import Cli, check_cli, table

AD = "{tmp}/adapter"
CONFIG = AD + "/adapter_config.json"
WEIGHTS = AD + "/adapter_model.safetensors"
FIRST_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def argv(command):
    return {
        "eval": ["eval", "--adapter", AD, "--data", "{eval}", "--max-new-tokens", "2"],
        "generate": ["generate", "--adapter", AD, "hi", "--max-new-tokens", "2"],
        "chat": ["chat", "--adapter", AD, "--max-new-tokens", "2"],
        "merge": ["merge", AD, "{tmp}/merged"],
        "combine": ["combine", AD, "{adapter}", "{tmp}/combined"],
        "serve": ["serve", "--model", "{model}", "--adapter", f"a={AD}"],
    }[command]


def adapter(change=None, **config):
    """A copy of the good adapter at {tmp}/adapter with adapter_config.json updated, then `change(dir)`."""
    def setup(env):
        d = env.adapter_copy(config=config or None)
        if change is not None:
            change(env, d)
    return setup


def rewrite(name, content):
    def change(env, d):
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return change


def tensors(edit):
    def change(env, d):
        t = load_file(d / "adapter_model.safetensors")
        edit(t)
        save_file(t, d / "adapter_model.safetensors")
    return change


def set_tensor(key, value):
    return tensors(lambda t: t.__setitem__(key, value(t[key])))


def nan_at(t):
    t = t.clone()
    t[0, 0] = float("nan")
    return t


def inf_at(t):
    t = t.clone()
    t[-1, -1] = float("inf")
    return t


def bin_only(env, d):
    weights = load_file(d / "adapter_model.safetensors")
    torch.save(weights, d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()


def truncate(name, keep):
    def change(env, d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[:keep])
    return change


def row(id, command, setup, *names):
    return Cli(id, argv(command), names, setup=setup)


ROWS = [
    # adapter_config.json
    *[row(f"config-is-list-{c}", c, adapter(rewrite("adapter_config.json", "[1, 2]")), CONFIG, "object")
      for c in ("eval", "generate", "chat", "merge")],
    row("config-is-string", "generate", adapter(rewrite("adapter_config.json", '"LORA"')), CONFIG, "object"),
    row("config-is-null", "merge", adapter(rewrite("adapter_config.json", "null")), CONFIG, "object"),
    row("config-invalid-json", "eval", adapter(rewrite("adapter_config.json", '{"r": 8,')), CONFIG, "invalid JSON"),
    row("config-empty", "generate", adapter(rewrite("adapter_config.json", "")), CONFIG),
    row("config-latin1", "generate", adapter(rewrite("adapter_config.json", '{"task_type": "caf\xe9"}'
                                                      .encode("latin-1"))), CONFIG, "byte 18"),
    row("config-binary", "merge", adapter(rewrite("adapter_config.json", b"\x00\x01\x02")), CONFIG, "byte 0"),
    row("config-missing", "generate", adapter(lambda env, d: (d / "adapter_config.json").unlink()), AD,
        "adapter_config.json"),
    row("peft-type-unknown", "generate", adapter(peft_type="NOPE"), CONFIG, "NOPE"),
    row("peft-type-int", "eval", adapter(peft_type=5), CONFIG, "peft_type"),
    row("r-true", "generate", adapter(r=True), CONFIG, "r"),
    row("r-zero", "eval", adapter(r=0), CONFIG, "r"),
    row("r-string", "merge", adapter(r="2"), CONFIG, "r"),
    row("alpha-zero", "generate", adapter(lora_alpha=0), CONFIG, "lora_alpha"),
    row("alpha-negative", "merge", adapter(lora_alpha=-4), CONFIG, "lora_alpha"),
    row("dropout-two", "generate", adapter(lora_dropout=2.0), CONFIG, "lora_dropout"),
    row("use-dora-string", "generate", adapter(use_dora="yes"), CONFIG, "use_dora"),
    row("targets-int", "generate", adapter(target_modules=7), CONFIG, "target_modules"),
    row("targets-typo", "generate", adapter(target_modules=["q_projj"]), "q_projj"),
    row("rank-pattern-typo", "generate", adapter(rank_pattern={"q_projj": 4}), "q_projj"),
    row("layers-to-transform-99", "generate", adapter(layers_to_transform=[99]), "99"),
    row("task-type-seq-cls-merge", "merge", adapter(task_type="SEQ_CLS"), "{tmp}/adapter", "SEQ_CLS"),
    row("base-missing", "generate", adapter(base_model_name_or_path=None), CONFIG, "base_model_name_or_path"),
    row("base-empty", "merge", adapter(base_model_name_or_path=""), "base_model_name_or_path"),
    row("base-nonexistent", "generate", adapter(base_model_name_or_path="{tmp}/nobase"), "{tmp}/nobase"),
    row("base-hub-id", "eval", adapter(base_model_name_or_path="org/some-model"), "org/some-model", "hub"),
    # weights
    row("weights-missing", "generate", adapter(lambda env, d: (d / "adapter_model.safetensors").unlink()), WEIGHTS),
    row("weights-truncated", "generate", adapter(truncate("adapter_model.safetensors", 300)), WEIGHTS),
    row("weights-truncated-merge", "merge", adapter(truncate("adapter_model.safetensors", 300)), WEIGHTS),
    row("weights-garbage", "eval", adapter(rewrite("adapter_model.safetensors", b"\xff" * 100)), WEIGHTS),
    row("weights-empty", "chat", adapter(rewrite("adapter_model.safetensors", b"")), WEIGHTS),
    row("weights-missing-key", "generate", adapter(tensors(lambda t: t.pop(FIRST_A))), WEIGHTS, "missing keys"),
    row("weights-extra-key", "generate", adapter(tensors(lambda t: t.__setitem__("base_model.model.x.weight",
                                                                                  torch.zeros(2)))), "unexpected"),
    row("weights-wrong-shape", "merge", adapter(set_tensor(FIRST_A, lambda t: torch.zeros(3, t.shape[1]))),
        "wrong shapes"),
    row("weights-nan", "generate", adapter(set_tensor(FIRST_A, nan_at)), WEIGHTS, FIRST_A, "NaN"),
    row("weights-nan-eval", "eval", adapter(set_tensor(FIRST_A, nan_at)), FIRST_A),
    row("weights-nan-merge", "merge", adapter(set_tensor(FIRST_A, nan_at)), FIRST_A),
    row("weights-inf", "chat", adapter(set_tensor(FIRST_A, inf_at)), FIRST_A, "inf"),
    row("weights-int", "generate", adapter(set_tensor(FIRST_A, lambda t: t.to(torch.int64))), FIRST_A, "int64"),
    row("weights-bool", "merge", adapter(set_tensor(FIRST_A, lambda t: t > 0)), FIRST_A, "bool"),
    row("weights-bin-only", "generate", adapter(bin_only), "adapter_model.bin", "--allow-pickle"),
    # lorakit's side files
    row("base-quantization-list", "generate", adapter(rewrite("base_quantization.json", "[]")),
        "base_quantization.json"),
    row("base-quantization-method-unknown", "merge", adapter(rewrite("base_quantization.json", '{"method": "nf5"}')),
        "base_quantization.json", "nf5"),
    row("base-quantization-invalid-json", "generate", adapter(rewrite("base_quantization.json", "{")),
        "base_quantization.json"),
    row("labels-invalid-json", "generate", adapter(rewrite("labels.json", "[1,")), "labels.json"),
    row("labels-not-a-list", "eval", adapter(rewrite("labels.json", '{"a": 1}')), "labels.json"),
    # the same mistakes met by combine (reads adapters without a base) and serve (loads them before binding)
    *[row(f"config-is-list-{c}", c, adapter(rewrite("adapter_config.json", "[1, 2]")), CONFIG, "object")
      for c in ("combine", "serve")],
    *[row(f"config-invalid-json-{c}", c, adapter(rewrite("adapter_config.json", '{"r": 8,')), CONFIG, "invalid JSON")
      for c in ("combine", "serve")],
    *[row(f"peft-type-unknown-{c}", c, adapter(peft_type="NOPE"), CONFIG, "NOPE") for c in ("combine", "serve")],
    *[row(f"r-true-{c}", c, adapter(r=True), CONFIG, "r") for c in ("combine", "serve")],
    *[row(f"alpha-zero-{c}", c, adapter(lora_alpha=0), CONFIG, "lora_alpha") for c in ("combine", "serve")],
    row("targets-typo-serve", "serve", adapter(target_modules=["q_projj"]), "q_projj"),
    Cli("base-nonexistent-serve", ["serve", "--adapter", f"a={AD}"], ["{tmp}/nobase"],
        setup=adapter(base_model_name_or_path="{tmp}/nobase")),
    *[row(f"weights-truncated-{c}", c, adapter(truncate("adapter_model.safetensors", 300)), WEIGHTS)
      for c in ("combine", "serve")],
    row("weights-missing-combine", "combine", adapter(lambda env, d: (d / "adapter_model.safetensors").unlink()),
        WEIGHTS),
    row("weights-missing-serve", "serve", adapter(lambda env, d: (d / "adapter_model.safetensors").unlink()),
        AD, "adapter_model.safetensors"),
    *[row(f"weights-nan-{c}", c, adapter(set_tensor(FIRST_A, nan_at)), FIRST_A, "NaN") for c in ("combine", "serve")],
    *[row(f"weights-int-{c}", c, adapter(set_tensor(FIRST_A, lambda t: t.to(torch.int64))), FIRST_A, "int64")
      for c in ("combine", "serve")],
    *[row(f"weights-wrong-shape-{c}", c, adapter(set_tensor(FIRST_A, lambda t: torch.zeros(3, t.shape[1]))),
          "3") for c in ("combine", "serve")],
    row("weights-bin-only-combine", "combine", adapter(bin_only), "adapter_model.bin"),
    row("weights-bin-only-serve", "serve", adapter(bin_only), AD, "only safetensors"),
    # the directory
    Cli("adapter-dir-missing-combine", argv("combine"), [AD]),
    Cli("adapter-dir-missing-serve", argv("serve"), [AD]),
    Cli("adapter-is-file-serve", argv("serve"), [AD], setup=lambda env: env.write("adapter", "x")),
    Cli("adapter-dir-missing", argv("generate"), [AD]),
    Cli("adapter-is-file", argv("eval"), [AD], setup=lambda env: env.write("adapter", "x")),
    Cli("adapter-dir-empty", argv("merge"), [AD], setup=lambda env: (env.tmp / "adapter").mkdir()),
    Cli("adapter-config-is-dir", argv("generate"), [AD],
        setup=lambda env: (env.tmp / "adapter" / "adapter_config.json").mkdir(parents=True)),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_adapter(row, env, capsys):
    check_cli(row, env, capsys)
