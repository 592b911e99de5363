"""Bad `lorakit ui` and `lorakit serve --ui` command lines: refused before anything loads or a port is
bound (the `env` fixture makes starting uvicorn fail the row)."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

ROWS = [
    Cli("ui-port-too-big", ["ui", "--port", "70000"], ["--port", "70000"]),
    Cli("ui-port-text", ["ui", "--port", "web"], ["--port", "web"]),
    Cli("ui-max-runs-zero", ["ui", "--max-runs", "0"], ["--max-runs", "0"]),
    Cli("ui-max-model-len-zero", ["ui", "--max-model-len", "0"], ["--max-model-len", "0"]),
    Cli("ui-runs-is-file", ["ui", "--runs", "{tmp}/f"], ["{tmp}/f"], setup=lambda env: env.write("f", "x")),
    Cli("ui-data-missing", ["ui", "--data", "{tmp}/nope"], ["{tmp}/nope"]),
    Cli("ui-configs-missing", ["ui", "--configs", "{tmp}/nope"], ["{tmp}/nope"]),
    Cli("ui-model-missing", ["ui", "--model", "{tmp}/nope"], ["{tmp}/nope"]),
    Cli("serve-ui-options-without-ui", ["serve", "--model", "{model}", "--max-runs", "2"], ["--max-runs", "--ui"]),
    Cli("serve-ui-runs-is-file", ["serve", "--model", "{model}", "--ui", "--runs", "{tmp}/f"], ["{tmp}/f"],
        setup=lambda env: env.write("f", "x")),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_ui_option(row, env, capsys):
    check_cli(row, env, capsys)
