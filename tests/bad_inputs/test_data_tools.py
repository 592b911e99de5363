"""Bad options and files for `lorakit data check | convert | split | dedupe | augment | self-instruct`."""
import json

import pytest

from bad_inputs.harness import Cli, check_cli, table

GOOD = [{"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say bye.", "output": "bye"}]
LABELS = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def files(named: dict):
    """setup writing `{tmp}/NAME` for each NAME: content."""
    def setup(env):
        for name, content in named.items():
            env.write(name, content)
    return setup


def with_good(more: dict | None = None):
    return files({"d.jsonl": jsonl(*GOOD), **(more or {})})


def data(id, argv, names, setup=None, **kw):
    return Cli(id, ["data", *argv], names, setup=setup, **kw)


ROWS = [
    # check
    data("check-missing", ["check", "{tmp}/nope.jsonl"], ["{tmp}/nope.jsonl", "not found"]),
    data("check-directory", ["check", "{tmp}"], ["{tmp}", "directory"]),
    data("check-bundled-unknown", ["check", "bundled:nope"], ["bundled:nope"]),
    data("check-extension", ["check", "{tmp}/d.txt"], ["{tmp}/d.txt", ".txt"], files({"d.txt": jsonl(*GOOD)})),
    data("check-latin1", ["check", "{tmp}/d.jsonl", "--no-tokenizer"], ["{tmp}/d.jsonl", "byte"],
         files({"d.jsonl": '{"instruction": "Caf\u00e9", "output": "x"}\n'.encode("latin-1")})),
    data("check-undetectable", ["check", "{tmp}/d.jsonl", "--no-tokenizer"], ["{tmp}/d.jsonl:1", "detect"],
         files({"d.jsonl": jsonl({"question": "q"})})),
    data("check-json-unparsable", ["check", "{tmp}/d.json", "--no-tokenizer"], ["{tmp}/d.json", "invalid JSON"],
         files({"d.json": "[{"})),
    data("check-format", ["check", "{tmp}/d.jsonl", "--format", "csv"], ["--format", "csv"], with_good()),
    data("check-max-length-zero", ["check", "{tmp}/d.jsonl", "--max-length", "0"], ["--max-length", "0"], with_good()),
    data("check-near-zero", ["check", "{tmp}/d.jsonl", "--near", "0"], ["--near", "0"], with_good()),
    data("check-near-text", ["check", "{tmp}/d.jsonl", "--near", "high"], ["--near", "high"], with_good()),
    data("check-model-and-no-tokenizer", ["check", "{tmp}/d.jsonl", "--model", "x", "--no-tokenizer"],
         ["--no-tokenizer", "--model"], with_good()),
    data("check-model-missing", ["check", "{tmp}/d.jsonl", "--model", "{tmp}/no-model"], ["{tmp}/no-model"],
         with_good()),
    data("check-plot-not-png", ["check", "{tmp}/d.jsonl", "--no-tokenizer", "--plot", "{tmp}/h.jpg"],
         ["--plot", "{tmp}/h.jpg", ".png"], with_good()),
    data("check-plot-under-file", ["check", "{tmp}/d.jsonl", "--no-tokenizer", "--plot", "{tmp}/d.jsonl/h.png"],
         ["--plot", "{tmp}/d.jsonl", "is a file"], with_good()),
    data("check-against-missing", ["check", "{tmp}/d.jsonl", "--no-tokenizer", "--against", "{tmp}/train.jsonl"],
         ["--against", "{tmp}/train.jsonl"], with_good()),
    data("check-against-bad-row", ["check", "{tmp}/d.jsonl", "--no-tokenizer", "--against", "{tmp}/t.jsonl"],
         ["{tmp}/t.jsonl:1", "output"], with_good({"t.jsonl": jsonl({"instruction": "x"})})),
    # convert
    data("convert-no-to", ["convert", "{tmp}/d.jsonl", "{tmp}/o.jsonl"], ["--to"], with_good()),
    data("convert-to-unknown", ["convert", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--to", "chatml"], ["--to", "chatml"],
         with_good()),
    data("convert-onto-input", ["convert", "{tmp}/d.jsonl", "{tmp}/d.jsonl", "--to", "messages", "--overwrite"],
         ["{tmp}/d.jsonl", "input"], with_good()),
    data("convert-output-exists", ["convert", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--to", "messages"],
         ["{tmp}/o.jsonl", "--overwrite"], with_good({"o.jsonl": "old\n"})),
    data("convert-output-extension", ["convert", "{tmp}/d.jsonl", "{tmp}/o.csv", "--to", "messages"],
         ["{tmp}/o.csv", ".csv"], with_good()),
    data("convert-classification", ["convert", "{tmp}/c.jsonl", "{tmp}/o.jsonl", "--to", "alpaca"],
         ["{tmp}/c.jsonl", "classification"], files({"c.jsonl": jsonl(*LABELS)})),
    data("convert-bad-row", ["convert", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--to", "messages"],
         ["{tmp}/d.jsonl:2", "output"], files({"d.jsonl": jsonl(GOOD[0], {"instruction": "x"})})),
    data("convert-not-alpaca", ["convert", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--to", "alpaca"],
         ["{tmp}/d.jsonl:1", "alternating"],
         files({"d.jsonl": jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                           {"role": "assistant", "content": "c"}]})})),
    # split
    data("split-eval-zero", ["split", "{tmp}/d.jsonl", "--eval", "0"], ["--eval", "0"], with_good()),
    data("split-eval-one", ["split", "{tmp}/d.jsonl", "--eval", "1"], ["--eval", "1"], with_good()),
    data("split-seed-text", ["split", "{tmp}/d.jsonl", "--seed", "abc"], ["--seed", "abc"], with_good()),
    data("split-one-row", ["split", "{tmp}/d.jsonl"], ["{tmp}/d.jsonl", "at least two"],
         files({"d.jsonl": jsonl(GOOD[0])})),
    data("split-same-outputs", ["split", "{tmp}/d.jsonl", "--train-out", "{tmp}/a.jsonl", "--eval-out", "a.jsonl"],
         ["same file"], with_good()),
    data("split-output-exists", ["split", "{tmp}/d.jsonl"], ["{tmp}/d_train.jsonl", "--overwrite"],
         with_good({"d_train.jsonl": "old\n"})),
    # dedupe
    data("dedupe-near-above-one", ["dedupe", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--near", "1.5"], ["--near", "1.5"],
         with_good()),
    data("dedupe-missing", ["dedupe", "{tmp}/nope.jsonl", "{tmp}/o.jsonl"], ["{tmp}/nope.jsonl"]),
    data("dedupe-output-is-dir", ["dedupe", "{tmp}/d.jsonl", "{tmp}/out.jsonl"], ["{tmp}/out.jsonl", "directory"],
         lambda env: (env.write("d.jsonl", jsonl(*GOOD)), (env.tmp / "out.jsonl").mkdir())),
    # augment
    data("augment-method", ["augment", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--method", "llm"], ["--method", "llm"],
         with_good()),
    data("augment-n-zero", ["augment", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--n-per-row", "0"], ["--n-per-row", "0"],
         with_good()),
    data("augment-rules-with-model", ["augment", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--model", "x"], ["--model"],
         with_good()),
    data("augment-temperature", ["augment", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--method", "model", "--temperature",
                                 "-1"], ["--temperature", "-1"], with_good()),
    data("augment-classification", ["augment", "{tmp}/c.jsonl", "{tmp}/o.jsonl"], ["{tmp}/c.jsonl", "request"],
         files({"c.jsonl": jsonl(*LABELS)})),
    data("augment-model-missing", ["augment", "{tmp}/d.jsonl", "{tmp}/o.jsonl", "--method", "model", "--model",
                                   "{tmp}/no-model"], ["{tmp}/no-model"], with_good()),
    # self-instruct
    data("self-instruct-no-seeds", ["self-instruct", "--n", "2", "{tmp}/o.jsonl"], ["--seed-tasks"]),
    data("self-instruct-n-zero", ["self-instruct", "--seed-tasks", "{tmp}/d.jsonl", "--n", "0", "{tmp}/o.jsonl"],
         ["--n", "0"], with_good()),
    data("self-instruct-seeds-missing", ["self-instruct", "--seed-tasks", "{tmp}/nope.jsonl", "--n", "2",
                                         "{tmp}/o.jsonl"], ["--seed-tasks", "{tmp}/nope.jsonl"]),
    data("self-instruct-seeds-labels", ["self-instruct", "--seed-tasks", "{tmp}/c.jsonl", "--n", "2", "{tmp}/o.jsonl",
                                        "--model", "{tmp}/no-model"], ["{tmp}/c.jsonl", "seed tasks"],
         files({"c.jsonl": jsonl(*LABELS)})),
    data("self-instruct-threshold", ["self-instruct", "--seed-tasks", "{tmp}/d.jsonl", "--n", "2", "{tmp}/o.jsonl",
                                     "--threshold", "2"], ["--threshold", "2"], with_good()),
    data("self-instruct-output-exists", ["self-instruct", "--seed-tasks", "{tmp}/d.jsonl", "--n", "2",
                                         "{tmp}/o.jsonl"], ["{tmp}/o.jsonl", "--overwrite"],
         with_good({"o.jsonl": "old\n"})),
    data("self-instruct-model-missing", ["self-instruct", "--seed-tasks", "{tmp}/d.jsonl", "--n", "1",
                                            "{tmp}/o.jsonl", "--model", "{tmp}/no-model"], ["{tmp}/no-model"],
         with_good()),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_data_tools_bad_input(row, env, capsys):
    check_cli(row, env, capsys)
