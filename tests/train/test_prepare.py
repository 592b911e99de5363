"""prepare(): every data row is read and validated before any model is loaded."""
import json

import pytest

from lorakit.data.io import DataError
from lorakit.train import prepare as prepare_module
from lorakit.train.config import RunConfig
from lorakit.train.loop import train
from lorakit.yamlconfig import load_config


def run(tmp_path, *overrides, task="sft"):
    """train() on a config whose model would fail to load anyway: the data must fail first."""
    base = {"task": task, "model": {"name": str(tmp_path / "no-such-model")}, "data": {"train": "bundled:quickstart_train"},
            "output_dir": str(tmp_path / "run")}
    return train(load_config(RunConfig, None, list(overrides), base=base), quiet=True)


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded before the data was validated")

    for name in ("load_causal_lm", "load_classifier", "load_model"):
        monkeypatch.setattr(prepare_module, name, refuse)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"instruction": "Say hi.", "output": "hi"}


@pytest.mark.parametrize("bad, message", [
    ({"instruction": "Say hi."}, "missing key 'output'"),
    ('{"instruction": "Say hi.", "output": ', "invalid JSON"),
    ({"instruction": "Say hi.", "output": 3}, "'output' must be a string"),
])
def test_bad_train_row_fails_with_file_and_line_before_model_load(tmp_path, no_model_loading, bad, message):
    path = _write(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError, match=rf"{path}:3: .*{message}"):
        run(tmp_path, f"data.train={path}")


def test_bad_eval_row_fails_before_model_load(tmp_path, no_model_loading):
    train_file = _write(tmp_path / "train.jsonl", [GOOD] * 3)
    eval_file = _write(tmp_path / "eval.jsonl", [GOOD, {"instruction": 1, "output": "x"}])
    with pytest.raises(DataError, match=rf"{eval_file}:2: "):
        run(tmp_path, f"data.train={train_file}", f"data.eval={eval_file}")


def test_missing_file_and_unknown_bundled_name(tmp_path, no_model_loading):
    with pytest.raises(DataError, match="data.train: file not found"):
        run(tmp_path, f"data.train={tmp_path / 'nope.jsonl'}")
    with pytest.raises(DataError, match="data.eval: "):
        run(tmp_path, "data.eval=bundled:nope")


def test_data_kind_must_fit_the_task(tmp_path, no_model_loading):
    with pytest.raises(DataError, match="cannot train task 'sft'"):
        run(tmp_path, "data.train=bundled:classify_train")
    with pytest.raises(DataError, match="task 'classification' needs 'text' and 'label'"):
        run(tmp_path, task="classification")


def test_eval_labels_unseen_in_training_fail_before_model_load(tmp_path, no_model_loading):
    train_file = _write(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    eval_file = _write(tmp_path / "eval.jsonl", [{"text": "c", "label": "neutral"}])
    with pytest.raises(DataError, match="labels not in the training data: neutral"):
        run(tmp_path, f"data.train={train_file}", f"data.eval={eval_file}", task="classification")


def test_rows_with_empty_targets_are_counted_in_a_warning(tmp_path):
    train_file = _write(tmp_path / "train.jsonl", [GOOD, {"instruction": "c", "output": " "}])
    config = load_config(RunConfig, None, [f"data.train={train_file}"])
    with pytest.warns(UserWarning, match="1 of 2 rows have an empty target"):
        prepare_module.load_data(config)
