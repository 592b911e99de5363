"""Bad task-prefix inputs: `lorakit eval --data TASK=FILE`, `generate / chat --task`, a broken
task_prefixes.json, and `data.train` source names. Each fails in one line, before a model loads."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

CFG = "{tmp}/run.yaml"
PREFIXED = [{"file": "{train}", "prefix": "[a] "}, {"file": "{train}", "prefix": "[b] "}]


def with_record(content):
    """`{tmp}/adapter`: the shared adapter with a task_prefixes.json holding `content` (text or JSON)."""
    def setup(env):
        env.adapter_copy()
        env.write("adapter/task_prefixes.json", content)
    return setup


ROWS = [
    Cli("eval-data-task-unrecorded", ["eval", "--adapter", "{adapter}", "--data", "notes={eval}"],
        ["--data", "notes", "records no task prefixes"]),
    Cli("eval-data-task-unknown", ["eval", "--adapter", "{tmp}/adapter", "--data", "nope={eval}"],
        ["--data", "nope", "its tasks: a"], setup=with_record({"tasks": {"a": "[a] "}})),
    Cli("eval-two-data-task-unknown", ["eval", "--adapter", "{tmp}/adapter", "--data", "{eval}", "--data",
                                       "nope={eval}"],
        ["--data", "nope", "its tasks: a"], setup=with_record({"tasks": {"a": "[a] "}})),
    Cli("eval-data-task-no-file", ["eval", "--adapter", "{adapter}", "--data", "notes="], ["--data", "notes="]),
    Cli("eval-data-task-file-missing", ["eval", "--adapter", "{tmp}/adapter", "--data", "a={tmp}/nope.jsonl"],
        ["--data", "{tmp}/nope.jsonl"], setup=with_record({"tasks": {"a": "[a] "}})),
    Cli("eval-record-not-json", ["eval", "--adapter", "{tmp}/adapter", "--data", "a={eval}"],
        ["{tmp}/adapter/task_prefixes.json"], setup=with_record("{tasks")),
    Cli("eval-record-tasks-not-object", ["eval", "--adapter", "{tmp}/adapter", "--data", "a={eval}"],
        ["{tmp}/adapter/task_prefixes.json", "tasks"], setup=with_record({"tasks": ["[a] "]})),
    Cli("generate-task-unrecorded", ["generate", "--adapter", "{adapter}", "--task", "notes", "hi"],
        ["--task", "notes", "records no task prefixes"]),
    Cli("generate-task-unknown", ["generate", "--adapter", "{tmp}/adapter", "--task", "nope", "hi"],
        ["--task", "nope", "its tasks: a, b"], setup=with_record({"tasks": {"a": "[a] ", "b": ""}})),
    Cli("generate-task-model-has-none", ["generate", "--model", "{model}", "--task", "notes", "hi"],
        ["--task", "notes", "records no task prefixes"]),
    Cli("chat-task-unknown", ["chat", "--adapter", "{tmp}/adapter", "--task", "nope"],
        ["--task", "nope"], setup=with_record({"tasks": {"a": "[a] "}})),
    Cli("train-prefixed-sources-same-task-name", ["train", CFG], [CFG, "data.train.1", "'train'", "name"],
        setup=lambda env: env.config({"data": {"train": PREFIXED}})),
    Cli("train-source-name-bad", ["train", CFG], [CFG, "data.train.0.name"],
        setup=lambda env: env.config({"data": {"train": [{"file": "{train}", "prefix": "[a] ", "name": "a/b"}]}})),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_task_prefix_input(row, env, capsys):
    check_cli(row, env, capsys)
