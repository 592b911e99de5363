"""Bad command lines: arguments and options, output directories, `--resume` from broken checkpoints."""
import pytest

from bad_inputs.harness import RUN_CHANGES, Cli, check_cli, table

CFG = "{tmp}/run.yaml"
OUT = "{tmp}/out"
STEP = OUT + "/checkpoints/step-000002"
GEN = ["generate", "--adapter", "{adapter}"]
EVAL = ["eval", "--adapter", "{adapter}", "--data", "{eval}"]


def write(relative, content):
    return lambda env: env.write(relative, content)


def resume_from(change=None, config=None):
    """{tmp}/out: a copy of a finished 2-step run (a checkpoint after each step); `change(env, out)` breaks it."""
    def setup(env):
        out = env.run_copy()
        env.config({**RUN_CHANGES, **(config or {})})
        if change is not None:
            change(env, out)
    return setup


def truncate(relative, keep):
    def change(env, out):
        p = out / relative
        p.write_bytes(p.read_bytes()[:keep])
    return change


def overwrite(relative, content):
    def change(env, out):
        (out / relative).write_bytes(content if isinstance(content, bytes) else content.encode())
    return change


def remove(relative):
    return lambda env, out: (out / relative).unlink()


def resume(id, change, *names, config=None):
    return Cli(id, ["train", CFG, "--resume"], names, setup=resume_from(change, config))


def non_empty_out(env):
    env.write("merged/keep.txt", "precious")


ROWS = [
    # commands and arguments
    Cli("no-command", [], ["COMMAND"]),
    Cli("unknown-command", ["trian"], ["trian"]),
    Cli("unknown-option", ["--verbose", "inspect"], ["--verbose"]),
    Cli("train-no-arguments", ["train"], ["config"]),
    Cli("train-unknown-option", ["train", CFG, "--resum"], ["--resum"], setup=lambda env: env.config()),
    Cli("generate-no-model", ["generate", "hi"], ["--adapter", "--model"]),
    Cli("generate-no-prompt", GEN, ["prompt"]),
    Cli("generate-adapter-and-model", [*GEN, "--model", "{model}", "hi"], ["--model"]),
    Cli("generate-empty-prompt", [*GEN, ""], ["prompt"]),
    Cli("generate-blank-prompt", [*GEN, "  \n\t "], ["prompt"]),
    Cli("generate-temperature-negative", [*GEN, "hi", "--temperature", "-1"], ["--temperature", "-1"]),
    Cli("generate-temperature-nan", [*GEN, "hi", "--temperature", "nan"], ["--temperature", "nan"]),
    Cli("generate-temperature-inf", [*GEN, "hi", "--temperature", "inf"], ["--temperature", "inf"]),
    Cli("generate-temperature-text", [*GEN, "hi", "--temperature", "warm"], ["--temperature", "warm"]),
    Cli("generate-max-new-tokens-zero", [*GEN, "hi", "--max-new-tokens", "0"], ["--max-new-tokens", "0"]),
    Cli("generate-max-new-tokens-negative", [*GEN, "hi", "--max-new-tokens", "-3"], ["--max-new-tokens"]),
    Cli("generate-max-new-tokens-fraction", [*GEN, "hi", "--max-new-tokens", "1.5"], ["--max-new-tokens", "1.5"]),
    Cli("generate-base-with-model", ["generate", "--model", "{model}", "--base", "{model}", "hi"], ["--base"]),
    Cli("chat-temperature-negative", ["chat", "--adapter", "{adapter}", "--temperature", "-0.5"], ["--temperature"]),
    Cli("chat-max-new-tokens-zero", ["chat", "--adapter", "{adapter}", "--max-new-tokens", "0"],
        ["--max-new-tokens"]),
    Cli("eval-no-data", ["eval", "--adapter", "{adapter}"], ["--data"]),
    Cli("eval-batch-size-zero", [*EVAL, "--batch-size", "0"], ["--batch-size"]),
    Cli("eval-max-samples-text", [*EVAL, "--max-samples", "all"], ["--max-samples", "all"]),
    Cli("eval-max-length-zero", [*EVAL, "--max-length", "0"], ["--max-length"]),
    Cli("inspect-bad-override", ["inspect", "{model}", "lora.r=0"], ["lora.r"]),
    # output directories
    Cli("merge-into-non-empty-dir", ["merge", "{adapter}", "{tmp}/merged"], ["{tmp}/merged", "--overwrite"],
        setup=non_empty_out),
    Cli("merge-into-file", ["merge", "{adapter}", "{tmp}/merged"], ["{tmp}/merged"], setup=write("merged", "x")),
    Cli("merge-under-a-file", ["merge", "{adapter}", "{tmp}/taken/merged"], ["{tmp}/taken"],
        setup=write("taken", "x")),
    Cli("merge-into-adapter-dir", ["merge", "{tmp}/adapter", "{tmp}/adapter"], ["{tmp}/adapter"],
        setup=lambda env: env.adapter_copy()),
    Cli("merge-requantize-unknown", ["merge", "{adapter}", "{tmp}/merged", "--requantize", "nf5"], ["nf5"]),
    Cli("merge-missing-output", ["merge", "{adapter}"], ["output"]),
    Cli("generate-blank-prompt-subprocess", [*GEN, " "], ["prompt"], subprocess=True),
    Cli("override-yaml-error-subprocess", ["train", CFG, "lora.target_modules=[q_proj"], ["lora.target_modules"],
        subprocess=True, setup=lambda env: env.config()),
    Cli("train-output-dir-is-file-subprocess", ["train", CFG], ["output_dir", "{tmp}/taken"], subprocess=True,
        setup=lambda env: (env.write("taken", "x"), env.config({"output_dir": "{tmp}/taken"}))),
    # --resume
    resume("resume-no-checkpoint", None, "--resume", "checkpoint", config={"output_dir": "{tmp}/elsewhere"}),
    resume("resume-truncated-tensors", truncate("checkpoints/step-000002/trainable.safetensors", 200),
           STEP + "/trainable.safetensors"),
    resume("resume-garbage-tensors", overwrite("checkpoints/step-000002/trainable.safetensors", b"\x00" * 64),
           STEP + "/trainable.safetensors"),
    resume("resume-missing-tensors", remove("checkpoints/step-000002/trainable.safetensors"),
           STEP + "/trainable.safetensors"),
    resume("resume-truncated-optimizer", truncate("checkpoints/step-000002/optimizer.pt", 100),
           STEP + "/optimizer.pt"),
    resume("resume-missing-optimizer", remove("checkpoints/step-000002/optimizer.pt"), STEP + "/optimizer.pt"),
    resume("resume-state-invalid-json", overwrite("checkpoints/step-000002/trainer_state.json", "{"),
           STEP + "/trainer_state.json"),
    resume("resume-state-is-list", overwrite("checkpoints/step-000002/trainer_state.json", "[]"),
           STEP + "/trainer_state.json"),
    resume("resume-state-missing-step", overwrite("checkpoints/step-000002/trainer_state.json", '{"batches": {}}'),
           STEP + "/trainer_state.json", "step"),
    resume("resume-other-rank", None, STEP, "lora", config={"lora": {"r": 4}}),
    resume("resume-other-targets", None, STEP, "k_proj", config={"lora": {"target_modules": ["q_proj", "k_proj"]}}),
    Cli("resume-output-dir-is-file", ["train", CFG, "--resume"], ["output_dir", "{tmp}/taken"],
        setup=lambda env: (env.write("taken", "x"), env.config({**RUN_CHANGES, "output_dir": "{tmp}/taken"}))),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_command_line(row, env, capsys):
    check_cli(row, env, capsys)
