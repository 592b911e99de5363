"""Bad `lorakit eval` command lines of the forgetting evaluator (several --data, --probe, --compare,
--config, --out): each fails in one line before a model loads or a row is written."""
import json

import pytest

from bad_inputs.harness import Cli, check_cli, table

EVAL = ["eval", "--adapter", "{adapter}", "--data", "{eval}"]


def metrics(relative, rows):
    return lambda env: env.write(relative, "".join(json.dumps(r) + "\n" for r in rows))


ROWS = [
    Cli("eval-second-data-missing", [*EVAL, "--data", "{tmp}/nope.jsonl"], ["--data", "{tmp}/nope.jsonl"]),
    Cli("eval-second-data-bundled-unknown", [*EVAL, "--data", "bundled:nope"], ["--data", "bundled:nope"]),
    Cli("eval-probe-unknown", [*EVAL, "--probe", "fluency"], ["--probe", "fluency"]),
    Cli("eval-probe-max-new-tokens-zero", [*EVAL, "--probe", "--probe-max-new-tokens", "0"],
        ["--probe-max-new-tokens", "0"]),
    Cli("eval-out-is-dir", [*EVAL, "--data", "{eval}", "--out", "{tmp}/d"], ["--out", "{tmp}/d"],
        setup=lambda env: (env.tmp / "d").mkdir()),
    Cli("eval-config-missing", ["eval", "--adapter", "{adapter}", "--config", "{tmp}/nope.yaml"], ["{tmp}/nope.yaml"]),
    Cli("eval-config-no-suites", ["eval", "--adapter", "{adapter}", "--config", "{tmp}/run.yaml"],
        ["{tmp}/run.yaml", "eval.suites"], setup=lambda env: env.config()),
    Cli("eval-config-suites-not-list", ["eval", "--adapter", "{adapter}", "--config", "{tmp}/run.yaml"],
        ["eval.suites"], setup=lambda env: env.config({"eval": {"suites": 3}})),
    Cli("eval-config-suite-missing", ["eval", "--adapter", "{adapter}", "--config", "{tmp}/run.yaml"],
        ["--data", "{tmp}/gone.jsonl"], setup=lambda env: env.config({"eval": {"suites": ["{tmp}/gone.jsonl"]}})),
    Cli("eval-config-and-data", [*EVAL, "--config", "{tmp}/run.yaml"], ["--config"], setup=lambda env: env.config()),
    Cli("eval-no-model", ["eval", "--data", "{eval}", "--data", "{eval}"], ["--adapter", "--model"]),
    Cli("eval-compare-one-run", ["eval", "--compare", "{tmp}/a"], ["--compare"]),
    Cli("eval-compare-missing-run", ["eval", "--compare", "{tmp}/a", "{tmp}/b"], ["--compare", "{tmp}/a"]),
    Cli("eval-compare-no-eval-rows", ["eval", "--compare", "{tmp}/a", "{tmp}/a"], ["{tmp}/a/metrics.jsonl", "eval"],
        setup=metrics("a/metrics.jsonl", [{"split": "train", "step": 1, "loss": 1.0}])),
    Cli("eval-compare-with-adapter", ["eval", "--compare", "{tmp}/a", "{tmp}/a", "--adapter", "{adapter}"],
        ["--compare", "--adapter"]),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_forgetting_option(row, env, capsys):
    check_cli(row, env, capsys)
