"""Bad continual / multi-task training configs (`lorakit train`): data mixing, replay, EWC, progressive LoRA.
Each is refused before training with one line naming the key."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

CFG = "{tmp}/run.yaml"


def bad(id, changes, *names):
    return Cli(id, ["train", CFG], [CFG, *names], setup=lambda env: env.config(changes))


def at_start(id, changes, *names):
    """Refused once the files are looked at (after the config validated): the line names the key."""
    return Cli(id, ["train", CFG], list(names), setup=lambda env: env.config(changes))


ROWS = [
    # multi-task mixing
    bad("mix-weight-negative", {"data": {"train": [{"file": "{train}"}, {"file": "{train}", "weight": -1}]}},
        "data.train.1.weight"),
    bad("mix-weight-zero", {"data": {"train": [{"file": "{train}", "weight": 0}]}}, "data.train.0.weight"),
    bad("mix-unknown-key", {"data": {"train": [{"file": "{train}", "wieght": 2}]}}, "data.train.0.wieght"),
    bad("mix-empty-list", {"data": {"train": []}}, "data.train"),
    bad("mix-source-no-file", {"data": {"train": [{"weight": 2}]}}, "data.train.0.file"),
    at_start("mix-source-not-found", {"data": {"train": [{"file": "{train}"}, {"file": "{tmp}/nope.jsonl"}]}},
             "data.train.1.file", "{tmp}/nope.jsonl"),
    # replay
    bad("replay-ratio-one", {"data": {"replay": {"file": "{train}", "ratio": 1.0}}}, "data.replay.ratio"),
    bad("replay-ratio-missing", {"data": {"replay": {"file": "{train}"}}}, "data.replay.ratio"),
    bad("replay-not-mapping", {"data": {"replay": "{train}"}}, "data.replay"),
    at_start("replay-not-found", {"data": {"replay": {"file": "{tmp}/old.jsonl", "ratio": 0.1}}},
             "data.replay.file", "{tmp}/old.jsonl"),
    at_start("replay-bundled-unknown", {"data": {"replay": {"file": "bundled:nope", "ratio": 0.1}}},
             "data.replay.file", "bundled:nope"),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_continual_config_bad_input(row, env, capsys):
    check_cli(row, env, capsys)
