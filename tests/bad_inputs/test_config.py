"""Bad run configs: the YAML file itself, its values, and command-line overrides (`lorakit train`)."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

CFG = "{tmp}/run.yaml"


def cfg(changes=None, drop=()):
    return lambda env: env.config(changes, drop)


def write(relative, content):
    return lambda env: env.write(relative, content)


def bad(id, changes, *names, drop=()):
    """`lorakit train run.yaml` where run.yaml is the good config with `changes`; the line names the file too."""
    return Cli(id, ["train", CFG], [CFG, *names], setup=cfg(changes, drop))


def at_inject(id, changes, *names):
    """A mistake only the model can reveal (a name that matches no module): the line names `lora:` and the key."""
    return Cli(id, ["train", CFG], ["lora: ", *names], setup=cfg(changes))


def override(id, *items, names=()):
    return Cli(id, ["train", CFG, *items], names, setup=cfg())


ROWS = [
    # the file
    Cli("missing-file", ["train", "{tmp}/nope.yaml"], ["{tmp}/nope.yaml"]),
    Cli("directory", ["train", "{tmp}/conf.d"], ["{tmp}/conf.d", "directory"],
        setup=lambda env: (env.tmp / "conf.d").mkdir()),
    Cli("binary-file", ["train", CFG], [CFG, "byte 0"], setup=write("run.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x80\xff")),
    Cli("latin1-file", ["train", CFG], [CFG, "byte 18"],
        setup=write("run.yaml", "data:\n  train: caf\xe9.jsonl\n".encode("latin-1"))),
    Cli("yaml-syntax", ["train", CFG], [CFG + ":3", "invalid YAML"], setup=write("run.yaml", "data:\n  train: [x\n")),
    Cli("yaml-tab-indent", ["train", CFG], [CFG, "invalid YAML"], setup=write("run.yaml", "data:\n\ttrain: x\n")),
    Cli("yaml-top-level-list", ["train", CFG], [CFG, "mapping"], setup=write("run.yaml", "- a\n- b\n")),
    Cli("yaml-top-level-scalar", ["train", CFG], [CFG, "mapping"], setup=write("run.yaml", "hello\n")),
    Cli("empty-file", ["train", CFG], [CFG, "data"], setup=write("run.yaml", "")),
    Cli("duplicate-key", ["train", CFG], [CFG, "lora"],
        setup=write("run.yaml", "lora: {r: 2}\nlora: {r: 4}\ndata: {train: x.jsonl}\n")),
    # keys and values
    bad("unknown-section", {"nonsense": 1}, "nonsense", "unknown key"),
    bad("unknown-key", {"train": {"epochz": 2}}, "train.epochz", "unknown key"),
    bad("section-not-mapping", {"train": 5}, "train"),
    bad("lora-r-true", {"lora": {"r": True}}, "lora.r"),
    bad("lora-r-zero", {"lora": {"r": 0}}, "lora.r"),
    bad("lora-r-negative", {"lora": {"r": -4}}, "lora.r"),
    bad("lora-r-fraction", {"lora": {"r": 2.5}}, "lora.r"),
    bad("lora-r-string", {"lora": {"r": "8"}}, "lora.r"),
    bad("lora-alpha-zero", {"lora": {"lora_alpha": 0}}, "lora.lora_alpha"),
    bad("lora-alpha-negative", {"lora": {"lora_alpha": -16}}, "lora.lora_alpha"),
    bad("lora-alpha-true", {"lora": {"lora_alpha": True}}, "lora.lora_alpha"),
    bad("lora-alpha-nan", {"lora": {"lora_alpha": float("nan")}}, "lora.lora_alpha"),
    bad("lora-alpha-inf", {"lora": {"lora_alpha": float("inf")}}, "lora.lora_alpha"),
    bad("lora-dropout-above-1", {"lora": {"lora_dropout": 1.5}}, "lora.lora_dropout"),
    bad("lora-dropout-negative", {"lora": {"lora_dropout": -0.1}}, "lora.lora_dropout"),
    bad("lora-bias-unknown", {"lora": {"bias": "maybe"}}, "lora.bias"),
    bad("lora-use-dora-string", {"lora": {"use_dora": "yes"}}, "lora.use_dora"),
    bad("lora-use-rslora-int", {"lora": {"use_rslora": 1}}, "lora.use_rslora"),
    bad("lora-init-unknown", {"lora": {"init_lora_weights": "kaiming"}}, "lora.init_lora_weights"),
    bad("lora-dora-and-pissa", {"lora": {"use_dora": True, "init_lora_weights": "pissa"}}, "PiSSA"),
    bad("targets-int", {"lora": {"target_modules": 5}}, "lora.target_modules"),
    bad("targets-empty-list", {"lora": {"target_modules": []}}, "lora.target_modules"),
    bad("targets-bad-regex", {"lora": {"target_modules": "q_proj["}}, "lora.target_modules", "q_proj["),
    bad("targets-list-of-ints", {"lora": {"target_modules": [1, 2]}}, "lora.target_modules"),
    at_inject("targets-typo", {"lora": {"target_modules": ["q_proj", "qq_proj"]}}, "qq_proj"),
    at_inject("exclude-typo", {"lora": {"exclude_modules": ["k_projj"]}}, "exclude_modules", "k_projj"),
    bad("exclude-bad-regex", {"lora": {"exclude_modules": "(k_proj"}}, "lora.exclude_modules", "(k_proj"),
    at_inject("rank-pattern-typo", {"lora": {"rank_pattern": {"q_projj": 4}}}, "rank_pattern", "q_projj"),
    at_inject("alpha-pattern-typo", {"lora": {"alpha_pattern": {"v_projj": 8}}}, "alpha_pattern", "v_projj"),
    bad("rank-pattern-zero", {"lora": {"rank_pattern": {"q_proj": 0}}}, "lora.rank_pattern"),
    bad("rank-pattern-true", {"lora": {"rank_pattern": {"q_proj": True}}}, "lora.rank_pattern"),
    bad("alpha-pattern-negative", {"lora": {"alpha_pattern": {"q_proj": -2}}}, "lora.alpha_pattern"),
    bad("rank-pattern-bad-regex", {"lora": {"rank_pattern": {"q_proj(": 4}}}, "lora.rank_pattern", "q_proj("),
    at_inject("modules-to-save-typo", {"lora": {"modules_to_save": ["lm_headd"]}}, "lm_headd"),
    at_inject("layers-to-transform-99", {"lora": {"layers_to_transform": [99]}}, "layers_to_transform", "99"),
    bad("layers-to-transform-negative", {"lora": {"layers_to_transform": [-1]}}, "lora.layers_to_transform"),
    at_inject("layers-pattern-unknown", {"lora": {"layers_to_transform": [0], "layers_pattern": "blockz"}},
        "layers_pattern", "blockz"),
    bad("method-unknown", {"method": "loraa"}, "method"),
    bad("task-unknown", {"task": "chat"}, "task"),
    bad("other-method-section", {"vera": {"r": 8}}, "vera"),
    bad("adalora-target-above-init", {"method": "adalora", "adalora": {"init_r": 4, "target_r": 8}},
        "adalora: ", "target_r=8"),
    bad("adalora-beta1-one", {"method": "adalora", "adalora": {"beta1": 1.0}}, "adalora.beta1"),
    bad("adalora-alpha-negative", {"method": "adalora", "adalora": {"lora_alpha": -8}}, "adalora.lora_alpha"),
    bad("vera-r-true", {"method": "vera", "vera": {"r": True}}, "vera.r"),
    bad("vera-d-initial-nan", {"method": "vera", "vera": {"d_initial": float("nan")}}, "vera.d_initial"),
    bad("model-dtype-unknown", {"model": {"dtype": "fp32"}}, "model.dtype"),
    bad("model-quantization-unknown", {"model": {"quantization": "nf5"}}, "model.quantization"),
    bad("model-name-empty", {"model": {"name": ""}}, "model.name"),
    bad("model-checkpointing-int", {"model": {"gradient_checkpointing": 1}}, "model.gradient_checkpointing"),
    bad("data-train-missing", {}, "data.train", drop=["data.train"]),
    bad("data-train-int", {"data": {"train": 5}}, "data.train"),
    bad("data-train-empty", {"data": {"train": ""}}, "data.train"),
    bad("data-max-length-tiny", {"data": {"max_length": 4}}, "data.max_length"),
    bad("data-batching-unknown", {"data": {"batching": "bucketed"}}, "data.batching"),
    bad("data-format-unknown", {"data": {"format": "jsonl"}}, "data.format"),
    bad("data-max-tokens-zero", {"data": {"max_tokens": 0}}, "data.max_tokens"),
    bad("train-lr-huge", {"train": {"lr": 1e38}}, "train.lr"),
    bad("train-lr-zero", {"train": {"lr": 0}}, "train.lr"),
    bad("train-lr-nan", {"train": {"lr": float("nan")}}, "train.lr"),
    bad("train-lr-inf", {"train": {"lr": float("inf")}}, "train.lr"),
    bad("train-lr-string", {"train": {"lr": "fast"}}, "train.lr"),
    bad("train-steps-zero", {"train": {"steps": 0}}, "train.steps"),
    bad("train-steps-true", {"train": {"steps": True}}, "train.steps"),
    bad("train-epochs-negative", {"train": {"epochs": -1}}, "train.epochs"),
    bad("train-grad-accum-zero", {"train": {"grad_accum": 0}}, "train.grad_accum"),
    bad("train-schedule-unknown", {"train": {"schedule": "cosin"}}, "train.schedule"),
    bad("train-compile-string", {"train": {"compile": "yes"}}, "train.compile"),
    bad("train-compile-number", {"train": {"compile": 1}}, "train.compile"),
    bad("train-max-grad-norm-negative", {"train": {"max_grad_norm": -1}}, "train.max_grad_norm"),
    bad("train-loraplus-huge", {"train": {"loraplus_lr_ratio": 1e38}}, "train.loraplus_lr_ratio"),
    bad("train-keep-last-zero", {"train": {"keep_last": 0}}, "train.keep_last"),
    bad("train-seed-fraction", {"train": {"seed": 1.5}}, "train.seed"),
    bad("train-weight-decay-negative", {"train": {"weight_decay": -0.1}}, "train.weight_decay"),
    bad("eval-max-new-tokens-zero", {"eval": {"max_new_tokens": 0}}, "eval.max_new_tokens"),
    bad("eval-generate-string", {"eval": {"generate": "no"}}, "eval.generate"),
    bad("output-dir-empty", {"output_dir": ""}, "output_dir"),
    bad("output-dir-int", {"output_dir": 5}, "output_dir"),
    Cli("output-dir-is-file", ["train", CFG], ["output_dir", "{tmp}/taken"],
        setup=lambda env: (env.write("taken", "x"), env.config({"output_dir": "{tmp}/taken"}))),
    Cli("output-dir-under-a-file", ["train", CFG], ["output_dir", "{tmp}/taken"],
        setup=lambda env: (env.write("taken", "x"), env.config({"output_dir": "{tmp}/taken/run"}))),
    # command-line overrides
    override("override-yaml-error", "lora.target_modules=[q_proj", names=["lora.target_modules=[q_proj", "YAML"]),
    override("override-yaml-unclosed-quote", "model.name='abc", names=["model.name"]),
    override("override-empty-segment", "a..b=1", names=["a..b"]),
    override("override-trailing-dot", "lora.=1", names=["lora."]),
    override("override-no-equals", "lora.r", names=["lora.r"]),
    override("override-empty-key", "=1", names=["=1"]),
    override("override-unknown-key", "train.lrr=1", names=["train.lrr", "unknown key"]),
    override("override-bad-float", "train.lr=abc", names=["train.lr"]),
    override("override-r-true", "lora.r=true", names=["lora.r"]),
    override("override-lr-huge", "train.lr=1e38", names=["train.lr"]),
    override("override-into-a-value", "lora.r.x=1", names=["lora.r"]),
    override("override-section-to-scalar", "lora=5", names=["lora"]),
    Cli("inspect-config-bad", ["inspect", "--config", CFG], [CFG, "lora.r"], setup=cfg({"lora": {"r": True}})),
    Cli("inspect-override-yaml-error", ["inspect", "{model}", "lora.target_modules=[q"], ["lora.target_modules"]),
    Cli("quickstart-override-yaml-error", ["quickstart", "lora.target_modules=[q"], ["lora.target_modules"]),
    Cli("quickstart-override-r-zero", ["quickstart", "lora.r=0"], ["lora.r"]),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_config(row, env, capsys):
    check_cli(row, env, capsys)
