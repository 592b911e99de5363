"""Bad command lines and configs for what happens after training on the way out of Python: `lorakit export`
(GGUF, GGUF LoRA, ONNX), `lorakit compress` (int8, pruning) and distillation runs (`task: distill`)."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

OUT_GGUF = "{tmp}/out.gguf"
OUT = "{tmp}/out"
CFG = "{tmp}/run.yaml"


def write(relative, content):
    return lambda env: env.write(relative, content)


def non_empty_out(env):
    env.write("out/keep.txt", "precious")


def distill(id, changes, *names):
    """`lorakit train run.yaml` with a distillation section; the line names the file and the key."""
    return Cli(id, ["train", CFG], [CFG, *names], setup=lambda env: env.config(changes))


ROWS = [
    # export gguf
    Cli("export-no-format", ["export"], ["FORMAT"]),
    Cli("export-format-unknown", ["export", "safetensors", "{adapter}", OUT], ["safetensors"]),
    Cli("export-gguf-source-missing", ["export", "gguf", "{tmp}/nope", OUT_GGUF], ["{tmp}/nope"]),
    Cli("export-gguf-type-unknown", ["export", "gguf", "{adapter}", OUT_GGUF, "--type", "q4_k"], ["--type", "q4_k"]),
    Cli("export-gguf-output-exists", ["export", "gguf", "{adapter}", OUT_GGUF], [OUT_GGUF, "--overwrite"],
        setup=write("out.gguf", "precious")),
    Cli("export-gguf-base-missing", ["export", "gguf", "{adapter}", OUT_GGUF, "--base", "{tmp}/nope"], ["{tmp}/nope"]),
    # export gguf-lora
    Cli("export-gguf-lora-source-is-model", ["export", "gguf-lora", "{model}", OUT_GGUF], ["{model}"]),
    Cli("export-gguf-lora-missing", ["export", "gguf-lora", "{tmp}/nope", OUT_GGUF], ["{tmp}/nope"]),
    Cli("export-gguf-lora-output-exists", ["export", "gguf-lora", "{adapter}", OUT_GGUF], [OUT_GGUF, "--overwrite"],
        setup=write("out.gguf", "precious")),
    # export onnx
    Cli("export-onnx-source-missing", ["export", "onnx", "{tmp}/nope", OUT], ["{tmp}/nope"]),
    Cli("export-onnx-into-non-empty-dir", ["export", "onnx", "{adapter}", OUT], [OUT, "--overwrite"],
        setup=non_empty_out),
    Cli("export-onnx-into-file", ["export", "onnx", "{adapter}", OUT], [OUT], setup=write("out", "x")),
    # compress int8
    Cli("compress-no-kind", ["compress"], ["KIND"]),
    Cli("compress-int8-kernel-unknown", ["compress", "int8", "{adapter}", OUT, "--kernel", "vnni"], ["--kernel", "vnni"]),
    Cli("compress-int8-source-missing", ["compress", "int8", "{tmp}/nope", OUT], ["{tmp}/nope"]),
    Cli("compress-int8-eval-missing", ["compress", "int8", "{adapter}", OUT, "--eval", "{tmp}/nope.jsonl"],
        ["{tmp}/nope.jsonl"]),
    Cli("compress-int8-max-samples-zero", ["compress", "int8", "{adapter}", OUT, "--max-samples", "0"],
        ["--max-samples", "0"]),
    Cli("compress-int8-into-non-empty-dir", ["compress", "int8", "{adapter}", OUT], [OUT, "--overwrite"],
        setup=non_empty_out),
    # compress prune
    Cli("compress-prune-method-unknown", ["compress", "prune", "{adapter}", OUT, "--method", "random"],
        ["--method", "random"]),
    Cli("compress-prune-sparsity-one", ["compress", "prune", "{adapter}", OUT, "--sparsity", "1"], ["--sparsity", "1"]),
    Cli("compress-prune-sparsity-text", ["compress", "prune", "{adapter}", OUT, "--sparsity", "half"],
        ["--sparsity", "half"]),
    Cli("compress-prune-heads-negative", ["compress", "prune", "{adapter}", OUT, "--heads", "-0.5"], ["--heads", "-0.5"]),
    Cli("compress-prune-keep-layers-text", ["compress", "prune", "{adapter}", OUT, "--method", "structured",
                                            "--keep-layers", "0,two"], ["--keep-layers", "0,two"]),
    Cli("compress-prune-steps-zero", ["compress", "prune", "{adapter}", OUT, "--steps", "0"], ["--steps", "0"]),
    Cli("compress-prune-recover-missing", ["compress", "prune", "{adapter}", OUT, "--recover", "{tmp}/nope.yaml"],
        ["{tmp}/nope.yaml"]),
    Cli("compress-prune-set-without-equals", ["compress", "prune", "{adapter}", OUT, "--recover", CFG,
                                              "--set", "train.steps"], ["train.steps"],
        setup=lambda env: env.config()),
    Cli("compress-prune-calibration-missing", ["compress", "prune", "{adapter}", OUT, "--method", "structured",
                                               "--calibration", "{tmp}/nope.jsonl"], ["{tmp}/nope.jsonl"]),
    Cli("compress-prune-into-non-empty-dir", ["compress", "prune", "{adapter}", OUT], [OUT, "--overwrite"],
        setup=non_empty_out),
    # distillation runs
    distill("distill-no-teacher", {"task": "distill"}, "distill.teacher"),
    distill("distill-section-without-task", {"distill": {"temperature": 3.0}}, "distill", "task"),
    distill("distill-temperature-zero", {"task": "distill", "distill": {"teacher": "self", "temperature": 0}},
            "distill.temperature"),
    distill("distill-alpha-above-one", {"task": "distill", "distill": {"teacher": "self", "alpha": 1.5}},
            "distill.alpha"),
    distill("distill-hidden-weight-negative", {"task": "distill", "distill": {"teacher": "self", "hidden_weight": -1}},
            "distill.hidden_weight"),
    distill("distill-hidden-layers-not-pairs",
            {"task": "distill", "distill": {"teacher": "self", "hidden_layers": [[1, 2, 3]]}}, "distill.hidden_layers"),
    distill("distill-self-with-full", {"task": "distill", "method": "full", "distill": {"teacher": "self"}},
            "distill.teacher", "full"),
    Cli("distill-teacher-missing", ["train", CFG], ["distill.teacher", "{tmp}/nope"],  # found when loading models
        setup=lambda env: env.config({"task": "distill", "distill": {"teacher": "{tmp}/nope"}})),
    distill("distill-unknown-key", {"task": "distill", "distill": {"teacher": "self", "temprature": 2}},
            "distill.temprature"),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_export_input(row, env, capsys):
    check_cli(row, env, capsys)
