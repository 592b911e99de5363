"""Bad data files: missing, wrong encoding, malformed rows, wrong columns (`lorakit train`, `lorakit eval`)."""
import json

import pytest

from bad_inputs.harness import Cli, check_cli, deep_merge, table

CFG = "{tmp}/run.yaml"
GOOD = {"instruction": "Say hi.", "output": "hi"}


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def train_with(relative, content, *names, split="train", changes=None):
    """`lorakit train` whose data.<split> is `{tmp}/relative` holding `content`."""
    def setup(env):
        env.write(relative, content)
        env.config(deep_merge({"data": {split: f"{{tmp}}/{relative}"}}, changes or {}))
    return setup


def row(id, relative, content, *names, split="train", changes=None):
    return Cli(id, ["train", CFG], names, setup=train_with(relative, content, split=split, changes=changes))


def classify(id, relative, content, *names, split="train"):
    changes = {"task": "classification", "lora": {"target_modules": "all-linear"}, "data": {"eval": None}}
    return row(id, relative, content, *names, split=split, changes=changes)


def eval_row(id, relative, content, *names, extra=()):
    def setup(env):
        if content is not None:
            env.write(relative, content)
    return Cli(id, ["eval", "--adapter", "{adapter}", "--data", f"{{tmp}}/{relative}", *extra], names, setup=setup)


LATIN1 = jsonl({"instruction": "Caf\u00e9?", "output": "oui"}).encode("latin-1")
ROWS = [
    # where the file is
    Cli("train-not-found", ["train", CFG], ["data.train", "{tmp}/nope.jsonl"],
        setup=lambda env: env.config({"data": {"train": "{tmp}/nope.jsonl"}})),
    Cli("train-is-directory", ["train", CFG], ["data.train", "{tmp}/data.jsonl", "directory"],
        setup=lambda env: ((env.tmp / "data.jsonl").mkdir(), env.config({"data": {"train": "{tmp}/data.jsonl"}}))),
    Cli("eval-not-found", ["train", CFG], ["data.eval", "{tmp}/nope.jsonl"],
        setup=lambda env: env.config({"data": {"eval": "{tmp}/nope.jsonl"}})),
    Cli("bundled-unknown", ["train", CFG], ["data.train", "bundled:nope"],
        setup=lambda env: env.config({"data": {"train": "bundled:nope"}})),
    row("unknown-extension", "train.txt", jsonl(GOOD), "{tmp}/train.txt", ".txt"),
    row("no-extension", "train", jsonl(GOOD), "{tmp}/train", "extension"),
    # encodings
    row("latin1-jsonl", "train.jsonl", LATIN1, "{tmp}/train.jsonl", "byte 20"),
    row("latin1-jsonl-eval", "eval.jsonl", LATIN1, "{tmp}/eval.jsonl", "byte 20", split="eval"),
    row("latin1-csv", "train.csv", "instruction,output\nCaf\u00e9?,oui\n".encode("latin-1"), "{tmp}/train.csv",
        "byte 22"),
    row("latin1-json", "train.json", json.dumps([{"instruction": "Caf\u00e9", "output": "x"}], ensure_ascii=False)
        .encode("latin-1"), "{tmp}/train.json", "byte 21"),
    row("cp1252-quotes-jsonl", "train.jsonl", jsonl({"instruction": "\u201cHi\u201d", "output": "x"}).encode("cp1252"),
        "{tmp}/train.jsonl", "byte 17"),
    row("binary-jsonl", "train.jsonl", bytes(range(256)), "{tmp}/train.jsonl", "byte 0"),
    row("utf16-without-bom", "train.jsonl", jsonl(GOOD).encode("utf-16-le"), "{tmp}/train.jsonl", "byte 1"),
    row("truncated-utf8", "train.jsonl", jsonl({"instruction": "Caf\u00e9", "output": "x"}).encode()[:21],
        "{tmp}/train.jsonl", "byte 20"),
    # file structure
    row("empty-file", "train.jsonl", "", "{tmp}/train.jsonl", "empty"),
    row("blank-lines-only", "train.jsonl", "\n \n\t\n", "{tmp}/train.jsonl", "empty"),
    row("invalid-json-line", "train.jsonl", jsonl(GOOD, '{"instruction": "x", "output": }'), "{tmp}/train.jsonl:2",
        "invalid JSON"),
    row("trailing-comma", "train.jsonl", jsonl('{"instruction": "x", "output": "y",}'), "{tmp}/train.jsonl:1"),
    row("line-is-list", "train.jsonl", jsonl(GOOD, ["a", "b"]), "{tmp}/train.jsonl:2", "object"),
    row("line-is-string", "train.jsonl", jsonl(GOOD, '"just text"'), "{tmp}/train.jsonl:2", "object"),
    row("json-top-level-object", "train.json", json.dumps({"a": 1, "b": 2}), "{tmp}/train.json", "array"),
    row("json-array-of-strings", "train.json", json.dumps(["a", "b"]), "{tmp}/train.json[0]"),
    row("json-invalid", "train.json", '[{"instruction": "x"', "{tmp}/train.json:1", "invalid JSON"),
    row("json-empty-array", "train.json", "[]", "{tmp}/train.json", "empty"),
    row("csv-header-only", "train.csv", "instruction,output\n", "{tmp}/train.csv", "empty"),
    row("csv-extra-cells", "train.csv", "instruction,output\na,b,c\n", "{tmp}/train.csv:2", "more cells"),
    row("csv-bad-json-cell", "train.csv", 'messages\n"[{""role"": ""user""}"\n', "{tmp}/train.csv:2", "messages"),
    row("parquet-corrupt", "train.parquet", b"PAR1 this is not parquet", "{tmp}/train.parquet", "parquet"),
    # rows
    row("undetectable-format", "train.jsonl", jsonl({"question": "a", "answer": "b"}), "{tmp}/train.jsonl:1",
        "detect"),
    row("alpaca-missing-output", "train.jsonl", jsonl(GOOD, {"instruction": "x"}), "{tmp}/train.jsonl:2", "output"),
    row("alpaca-output-int", "train.jsonl", jsonl({"instruction": "x", "output": 5}), "{tmp}/train.jsonl:1", "output"),
    row("alpaca-output-null", "train.jsonl", jsonl({"instruction": "x", "output": None}), "{tmp}/train.jsonl:1",
        "output"),
    row("alpaca-history-not-pairs", "train.jsonl", jsonl({**GOOD, "history": [["a"]]}), "{tmp}/train.jsonl:1",
        "history"),
    row("messages-bad-role", "train.jsonl", jsonl({"messages": [{"role": "human", "content": "a"}]}),
        "{tmp}/train.jsonl:1", "role"),
    row("messages-start-with-assistant", "train.jsonl",
        jsonl({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
        "{tmp}/train.jsonl:1", "user turn"),
    row("messages-no-assistant", "train.jsonl", jsonl({"messages": [{"role": "user", "content": "a"}]}),
        "{tmp}/train.jsonl:1", "assistant"),
    row("messages-content-null", "train.jsonl",
        jsonl({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]}),
        "{tmp}/train.jsonl:1", "content"),
    row("messages-not-list", "train.jsonl", jsonl({"messages": "hello"}), "{tmp}/train.jsonl:1", "messages"),
    row("messages-empty", "train.jsonl", jsonl({"messages": []}), "{tmp}/train.jsonl:1", "empty"),
    row("sharegpt-missing-value", "train.jsonl", jsonl({"conversations": [{"from": "human"}]}), "{tmp}/train.jsonl:1",
        "value"),
    row("format-forced-mismatch", "train.jsonl", jsonl({"messages": [{"role": "user", "content": "a"}]}),
        "{tmp}/train.jsonl:1", "instruction", changes={"data": {"format": "alpaca"}}),
    row("eval-bad-row", "eval.jsonl", jsonl(GOOD, {"instruction": 3, "output": "x"}), "{tmp}/eval.jsonl:2",
        "instruction", split="eval"),
    row("eval-classification-rows", "eval.jsonl", jsonl({"text": "a", "label": "x"}), "{tmp}/eval.jsonl",
        "classification", split="eval"),
    row("all-text-empty", "train.jsonl", jsonl({"text": ""}, {"text": "  "}), "{tmp}/train.jsonl", "empty"),
    row("all-outputs-empty", "train.jsonl",
        jsonl({"instruction": "a", "output": ""}, {"instruction": "b", "output": ""}),
        "{tmp}/train.jsonl", "empty"),
    row("sft-on-classification-data", "train.jsonl", jsonl({"text": "a", "label": "x"}), "{tmp}/train.jsonl",
        "classification"),
    # classification
    classify("classify-csv-without-label", "train.csv", "text\nhello\nworld\n", "{tmp}/train.csv", "label"),
    classify("classify-jsonl-without-label", "train.jsonl", jsonl({"text": "a"}, {"text": "b"}), "{tmp}/train.jsonl",
             "label"),
    classify("classify-label-bool", "train.jsonl", jsonl({"text": "a", "label": True}), "{tmp}/train.jsonl:1", "label"),
    classify("classify-label-float", "train.jsonl", jsonl({"text": "a", "label": 0.5}), "{tmp}/train.jsonl:1",
             "label"),
    classify("classify-label-null", "train.jsonl", jsonl({"text": "a", "label": None}), "{tmp}/train.jsonl:1",
             "label"),
    classify("classify-labels-mixed", "train.jsonl", jsonl({"text": "a", "label": "x"}, {"text": "b", "label": 1}),
             "{tmp}/train.jsonl", "label"),
    classify("classify-one-label", "train.jsonl", jsonl({"text": "a", "label": "x"}, {"text": "b", "label": "x"}),
             "{tmp}/train.jsonl", "label"),
    classify("classify-text-int", "train.jsonl", jsonl({"text": 5, "label": "x"}), "{tmp}/train.jsonl:1", "text"),
    Cli("classify-eval-unseen-label", ["train", CFG], ["{tmp}/eval.jsonl", "zzz"], setup=lambda env: (
        env.write("eval.jsonl", jsonl({"text": "a", "label": "zzz"})),
        env.config({"task": "classification", "lora": {"target_modules": "all-linear"},
                    "data": {"train": "{classify_train}", "eval": "{tmp}/eval.jsonl"}}))),
    # lorakit eval --data
    eval_row("eval-data-latin1", "d.jsonl", LATIN1, "{tmp}/d.jsonl", "byte 20"),
    Cli("eval-data-directory", ["eval", "--adapter", "{adapter}", "--data", "{tmp}/d.jsonl"],
        ["--data", "{tmp}/d.jsonl", "directory"], setup=lambda env: (env.tmp / "d.jsonl").mkdir()),
    eval_row("eval-data-missing", "nope.jsonl", None, "--data", "{tmp}/nope.jsonl"),
    eval_row("eval-data-bad-row", "d.jsonl", jsonl({"instruction": "x"}), "{tmp}/d.jsonl:1", "output"),
    eval_row("eval-format-unknown", "d.jsonl", jsonl(GOOD), "--format", "chatml", extra=("--format", "chatml")),
    eval_row("eval-data-empty", "d.jsonl", "", "{tmp}/d.jsonl", "empty"),
    eval_row("eval-data-classification-on-lm", "d.jsonl", jsonl({"text": "a", "label": "x"}), "{tmp}/d.jsonl",
             "classification"),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_data(row, env, capsys):
    check_cli(row, env, capsys)
