"""Bad `lorakit serve` command lines: every one must fail before the model loads or a port is bound
(the `env` fixture makes starting uvicorn fail the row)."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

SERVE = ["serve", "--model", "{model}"]

ROWS = [
    Cli("serve-adapter-no-equals", [*SERVE, "--adapter", "{adapter}"], ["--adapter", "NAME=DIR"]),
    Cli("serve-adapter-empty-name", [*SERVE, "--adapter", "={adapter}"], ["--adapter", "NAME=DIR"]),
    Cli("serve-adapter-name-with-space", [*SERVE, "--adapter", "my notes={adapter}"], ["--adapter", "my notes"]),
    Cli("serve-adapter-missing-dir", [*SERVE, "--adapter", "a={tmp}/nope"], ["--adapter", "{tmp}/nope"]),
    Cli("serve-adapter-name-twice", [*SERVE, "--adapter", "a={adapter}", "--adapter", "a={adapter}"],
        ["'a'", "twice"]),
    Cli("serve-adapter-dir-missing", [*SERVE, "--adapter-dir", "{tmp}/nope"], ["--adapter-dir", "{tmp}/nope"]),
    Cli("serve-adapter-dir-is-file", [*SERVE, "--adapter-dir", "{tmp}/f"], ["--adapter-dir", "{tmp}/f"],
        setup=lambda env: env.write("f", "x")),
    Cli("serve-model-missing", ["serve", "--model", "{tmp}/nope"], ["{tmp}/nope"]),
    Cli("serve-port-too-big", [*SERVE, "--port", "70000"], ["--port", "70000"]),
    Cli("serve-port-zero", [*SERVE, "--port", "0"], ["--port", "0"]),
    Cli("serve-port-text", [*SERVE, "--port", "http"], ["--port", "http"]),
    Cli("serve-max-batch-zero", [*SERVE, "--max-batch", "0"], ["--max-batch", "0"]),
    Cli("serve-max-model-len-zero", [*SERVE, "--max-model-len", "0"], ["--max-model-len", "0"]),
    Cli("serve-max-waiting-negative", [*SERVE, "--max-waiting", "-1"], ["--max-waiting", "-1"]),
    Cli("serve-max-loaded-adapters-zero", [*SERVE, "--max-loaded-adapters", "0"], ["--max-loaded-adapters", "0"]),
    Cli("serve-quantization-unknown", [*SERVE, "--quantization", "nf5"], ["--quantization", "nf5"]),
    Cli("serve-cpu-weights-unknown", [*SERVE, "--cpu-weights", "blocked"], ["--cpu-weights", "blocked"]),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_serve_option(row, env, capsys):
    check_cli(row, env, capsys)
