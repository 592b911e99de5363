"""Bad `lorakit router build`, `generate --router` and `serve --router` command lines: each fails in
one line before an encoder or model loads and before anything is written."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

A = "a={adapter}:{train}"
B = "b={adapter}:{eval}"
BUILD = ["router", "build", "--task", A]


def router_dir(files):
    def setup(env):
        for name, content in files.items():
            env.write(f"r/{name}", content)
    return setup


GOOD_JSON = {"version": 1, "encoder": "all-minilm-l6-v2", "kind": "centroid", "max_length": 128, "dim": 4,
             "tasks": [{"name": "a", "adapter": "/a"}, {"name": "b", "adapter": "/b"}]}

ROWS = [
    Cli("router-no-subcommand", ["router"], ["SUBCOMMAND"]),
    Cli("router-build-no-task", ["router", "build", "{tmp}/out"], ["--task"]),
    Cli("router-build-one-task", [*BUILD, "{tmp}/out"], ["--task", "two tasks"]),
    Cli("router-build-task-no-equals", [*BUILD, "--task", "b{adapter}:{eval}", "{tmp}/out"], ["--task", "NAME=ADAPTER_DIR:DATA"]),
    Cli("router-build-task-no-data", [*BUILD, "--task", "b={adapter}", "{tmp}/out"], ["--task", "NAME=ADAPTER_DIR:DATA"]),
    Cli("router-build-task-named-auto", [*BUILD, "--task", "auto={adapter}:{eval}", "{tmp}/out"], ["'auto'"]),
    Cli("router-build-task-twice", [*BUILD, "--task", A, "{tmp}/out"], ["'a'", "twice"]),
    Cli("router-build-adapter-missing", [*BUILD, "--task", "b={tmp}/nope:{eval}", "{tmp}/out"],
        ["--task b", "{tmp}/nope"]),
    Cli("router-build-data-missing", [*BUILD, "--task", "b={adapter}:{tmp}/nope.jsonl", "{tmp}/out"],
        ["--task b", "{tmp}/nope.jsonl"]),
    Cli("router-build-bundled-unknown", [*BUILD, "--task", "b={adapter}:bundled:nope", "{tmp}/out"],
        ["--task b", "bundled:nope"]),
    Cli("router-build-output-not-empty", [*BUILD, "--task", B, "{tmp}/out"], ["{tmp}/out", "--overwrite"],
        setup=lambda env: env.write("out/keep.txt", "precious")),
    Cli("router-build-output-is-file", [*BUILD, "--task", B, "{tmp}/out"], ["{tmp}/out"],
        setup=lambda env: env.write("out", "x")),
    Cli("router-build-kind-unknown", [*BUILD, "--task", B, "{tmp}/out", "--kind", "knn"], ["--kind", "knn"]),
    Cli("router-build-max-prompts-zero", [*BUILD, "--task", B, "{tmp}/out", "--max-prompts", "0"],
        ["--max-prompts", "0"]),
    Cli("generate-router-missing", ["generate", "--router", "{tmp}/nope", "hi"], ["{tmp}/nope", "router"]),
    Cli("generate-router-and-adapter", ["generate", "--router", "{tmp}/r", "--adapter", "{adapter}", "hi"],
        ["--adapter", "--router"]),
    Cli("generate-router-json-broken", ["generate", "--router", "{tmp}/r", "hi"], ["{tmp}/r/router.json"],
        setup=router_dir({"router.json": "{"})),
    Cli("generate-router-no-tensors", ["generate", "--router", "{tmp}/r", "hi"], ["{tmp}/r/router.safetensors"],
        setup=lambda env: env.write("r/router.json", {**GOOD_JSON, "tasks": [
            {"name": n, "adapter": env.vars()["adapter"]} for n in "ab"]})),
    Cli("generate-router-one-task", ["generate", "--router", "{tmp}/r", "hi"], ["{tmp}/r/router.json", "tasks"],
        setup=router_dir({"router.json": {**GOOD_JSON, "tasks": GOOD_JSON["tasks"][:1]}})),
    Cli("serve-router-missing", ["serve", "--model", "{model}", "--router", "{tmp}/nope"], ["{tmp}/nope", "router"]),
    Cli("serve-router-kind-unknown", ["serve", "--model", "{model}", "--router", "{tmp}/r"], ["kind", "'knn'"],
        setup=router_dir({"router.json": {**GOOD_JSON, "kind": "knn"}})),
    Cli("serve-router-adapter-named-auto", ["serve", "--model", "{model}", "--router", "{tmp}/r", "--adapter",
                                            "auto={adapter}"], ["--adapter auto"],
        setup=router_dir({"router.json": "{}"})),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_router_option(row, env, capsys):
    check_cli(row, env, capsys)
