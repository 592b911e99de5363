"""Run logs: metrics.jsonl and TensorBoard events follow fresh runs and resumes."""
import json

import pytest

from lorakit.train.logs import MetricsLog


def _rows(directory):
    return [json.loads(l) for l in (directory / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_replaces_the_old_logs(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path)
    log.write({"split": "train", "step": 1, "loss": 2.0})
    log.close()
    old_events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert old_events

    log = MetricsLog(tmp_path)
    log.write({"split": "train", "step": 1, "loss": 1.0})
    log.close()
    assert _rows(tmp_path) == [{"split": "train", "step": 1, "loss": 1.0}]
    assert not any(p.exists() for p in old_events)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_resume_keeps_rows_up_to_the_checkpoint_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"split": "train", "step": step, "loss": float(step)})
    log.close()
    log = MetricsLog(tmp_path, resume=True, until_step=2)
    log.write({"split": "train", "step": 3, "loss": 0.5})
    log.close()
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 0.5)]
