"""Bad continual / multi-task training configs (`lorakit train`): data mixing, replay, EWC, progressive LoRA.
Each is refused before training with one line naming the key."""
import json

import pytest

from bad_inputs.harness import Cli, check_cli, table

CFG = "{tmp}/run.yaml"


def bad(id, changes, *names):
    return Cli(id, ["train", CFG], [CFG, *names], setup=lambda env: env.config(changes))


def at_start(id, changes, *names):
    """Refused once the files are looked at (after the config validated): the line names the key."""
    return Cli(id, ["train", CFG], list(names), setup=lambda env: env.config(changes))


def with_fisher(env, fisher: bytes | None = b"", shape_of=None):
    """`{tmp}/out`: the shared finished run, with a fisher.safetensors (None: none; b"": one that fits)."""
    run = env.run_copy()
    if fisher == b"":
        import torch
        from safetensors.torch import save_file

        from lorakit.io import read_weights

        weights = read_weights(run / "adapter")
        save_file({k: torch.ones(shape_of or t.shape) for k, t in weights.items()}, str(run / "fisher.safetensors"))
    elif fisher is not None:
        (run / "fisher.safetensors").write_bytes(fisher)
    return run


def ewc(id, names, fisher=b"", shape_of=None, changes=None):
    def setup(env):
        with_fisher(env, fisher, shape_of)
        env.config({"train": {"ewc": {"lambda": 1.0, "from": "{tmp}/out"}}, **(changes or {})})
    return Cli(id, ["train", CFG], names, setup=setup)


ROWS = [
    # multi-task mixing
    bad("mix-weight-negative", {"data": {"train": [{"file": "{train}"}, {"file": "{train}", "weight": -1}]}},
        "data.train.1.weight"),
    bad("mix-weight-zero", {"data": {"train": [{"file": "{train}", "weight": 0}]}}, "data.train.0.weight"),
    bad("mix-unknown-key", {"data": {"train": [{"file": "{train}", "wieght": 2}]}}, "data.train.0.wieght"),
    bad("mix-empty-list", {"data": {"train": []}}, "data.train"),
    bad("mix-source-no-file", {"data": {"train": [{"weight": 2}]}}, "data.train.0.file"),
    at_start("mix-source-not-found", {"data": {"train": [{"file": "{train}"}, {"file": "{tmp}/nope.jsonl"}]}},
             "data.train.1.file", "{tmp}/nope.jsonl"),
    # replay
    bad("replay-ratio-one", {"data": {"replay": {"file": "{train}", "ratio": 1.0}}}, "data.replay.ratio"),
    bad("replay-ratio-missing", {"data": {"replay": {"file": "{train}"}}}, "data.replay.ratio"),
    bad("replay-not-mapping", {"data": {"replay": "{train}"}}, "data.replay"),
    at_start("replay-not-found", {"data": {"replay": {"file": "{tmp}/old.jsonl", "ratio": 0.1}}},
             "data.replay.file", "{tmp}/old.jsonl"),
    at_start("replay-bundled-unknown", {"data": {"replay": {"file": "bundled:nope", "ratio": 0.1}}},
             "data.replay.file", "bundled:nope"),
    # continuing an adapter, Fisher, EWC
    at_start("init-adapter-missing", {"train": {"init_adapter": "{tmp}/nope"}}, "train.init_adapter", "{tmp}/nope"),
    at_start("init-adapter-not-adapter", {"train": {"init_adapter": "{tmp}"}}, "train.init_adapter",
             "adapter_config.json"),
    at_start("init-adapter-other-rank", {"train": {"init_adapter": "{adapter}"}, "lora": {"r": 4}},
             "train.init_adapter", "wrong shapes"),
    at_start("init-adapter-other-targets", {"train": {"init_adapter": "{adapter}"},
                                            "lora": {"target_modules": ["q_proj"]}},
             "train.init_adapter", "unexpected keys"),
    bad("init-adapter-full", {"method": "full", "train": {"init_adapter": "{adapter}"}}, "train.init_adapter",
        "adapter method"),
    bad("fisher-samples-negative", {"train": {"save_fisher_samples": -3}}, "train.save_fisher_samples"),
    bad("fisher-samples-full", {"method": "full", "train": {"save_fisher_samples": 4}}, "train.save_fisher_samples"),
    bad("ewc-lambda-missing", {"train": {"ewc": {"from": "{tmp}"}}}, "train.ewc.lambda"),
    bad("ewc-lambda-negative", {"train": {"ewc": {"lambda": -1, "from": "{tmp}"}}}, "train.ewc.lambda"),
    bad("ewc-lambda-string", {"train": {"ewc": {"lambda": "big", "from": "{tmp}"}}}, "train.ewc.lambda"),
    bad("ewc-from-missing", {"train": {"ewc": {"lambda": 1.0}}}, "train.ewc.from"),
    bad("ewc-unknown-key", {"train": {"ewc": {"lambda": 1.0, "from": "{tmp}", "fisher": 3}}}, "train.ewc.fisher"),
    bad("ewc-and-other-init", {"train": {"ewc": {"lambda": 1.0, "from": "{tmp}/out"}, "init_adapter": "{adapter}"}},
        "train.init_adapter", "train.ewc.from"),
    at_start("ewc-run-missing", {"train": {"ewc": {"lambda": 1.0, "from": "{tmp}/gone"}}}, "train.ewc.from",
             "{tmp}/gone"),
    ewc("ewc-no-fisher", ["train.ewc.from", "fisher.safetensors", "save_fisher_samples"], fisher=None),
    ewc("ewc-fisher-truncated", ["fisher.safetensors"], fisher=b"\x08\x00\x00"),
    ewc("ewc-fisher-wrong-shape", ["train.ewc.from", "fisher.safetensors", "(3, 3)"], shape_of=(3, 3)),
    ewc("ewc-other-rank", ["train.ewc.from", "wrong shapes"], changes={"lora": {"r": 4}}),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_continual_config_bad_input(row, env, capsys):
    check_cli(row, env, capsys)


def earlier(id, names, config=None, changes=None):
    """lora.progressive_from: [{tmp}/adapter], a copy of the shared adapter (`config` updates its config)."""
    def setup(env):
        env.adapter_copy(config=config)
        env.config({"lora": {"progressive_from": ["{tmp}/adapter"]}, **(changes or {})})
    return Cli(id, ["train", CFG], names, setup=setup)


PROGRESSIVE_ROWS = [
    at_start("progressive-missing", {"lora": {"progressive_from": ["{tmp}/nope"]}}, "lora.progressive_from.0",
             "{tmp}/nope"),
    bad("progressive-not-list", {"lora": {"progressive_from": 3}}, "lora.progressive_from"),
    bad("progressive-empty-name", {"lora": {"progressive_from": [""]}}, "lora.progressive_from.0"),
    bad("orthogonal-without-progressive", {"lora": {"orthogonal_lambda": 0.1}}, "lora.orthogonal_lambda",
        "progressive_from"),
    bad("orthogonal-negative", {"lora": {"orthogonal_lambda": -1}}, "lora.orthogonal_lambda"),
    bad("progressive-with-dora", {"lora": {"progressive_from": ["{adapter}"], "use_dora": True}},
        "lora.progressive_from", "use_dora"),
    bad("progressive-full", {"method": "full", "lora": {"progressive_from": ["{adapter}"]}},
        "lora.progressive_from", "adapter method"),
    earlier("progressive-dora-adapter", ["lora.progressive_from.0", "DoRA"], config={"use_dora": True}),
    Cli("progressive-not-lora", ["train", CFG], ["lora.progressive_from.0", "IA3"], setup=lambda env: (
        env.adapter_copy(), env.write("adapter/adapter_config.json", json.dumps(
            {"peft_type": "IA3", "target_modules": ["k_proj"], "feedforward_modules": []})),
        env.config({"lora": {"progressive_from": ["{tmp}/adapter"]}}))),
    Cli("generate-stack-missing", ["generate", "--adapter", "{adapter}", "--adapter", "{tmp}/nope", "hi"],
        ["--adapter", "{tmp}/nope"]),
    Cli("generate-stack-dora", ["generate", "--adapter", "{tmp}/adapter", "--adapter", "{adapter}", "hi"],
        ["--adapter", "{tmp}/adapter"], setup=lambda env: env.adapter_copy(config={"use_dora": True})),
    earlier("progressive-other-model", ["lora.progressive_from.0", "o_proj"],
            config={"target_modules": ["o_proj_x"]}),
]


@pytest.mark.parametrize("row", table(PROGRESSIVE_ROWS))
def test_progressive_config_bad_input(row, env, capsys):
    check_cli(row, env, capsys)
