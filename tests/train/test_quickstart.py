"""The quickstart: its built-in config is configs/quickstart.yaml, and it runs end to end."""
from pathlib import Path

import pytest

from lorakit.train.config import RunConfig
from lorakit.train.evaluate import Generation
from lorakit.train.quickstart import quickstart_config, run_quickstart, side_by_side
from lorakit.yamlconfig import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_configs_quickstart_yaml_is_the_builtin_quickstart():
    assert load_config(RunConfig, str(ROOT / "configs" / "quickstart.yaml")) == quickstart_config()


def test_quickstart_overrides_apply():
    config = quickstart_config(["train.steps=3", "output_dir=/tmp/x"])
    assert config.train.steps == 3 and config.output_dir == "/tmp/x"


def test_side_by_side_marks_exact_matches():
    conv = [{"role": "user", "content": "Lunch with Ana on Friday at noon."},
            {"role": "assistant", "content": "lunch|Ana|Fri|12:00pm"}]
    before = [Generation("p", "lunch|Ana|Fri|12:00pm", "Sure! Lunch with Ana")]
    after = [Generation("p", "lunch|Ana|Fri|12:00pm", "lunch|Ana|Fri|12:00pm")]
    table = side_by_side([conv], before, after)
    row = table.splitlines()[2]
    assert row.startswith("Lunch with Ana") and "✗ Sure! Lunch with Ana" in row and "✓ lunch|Ana|Fri|12:00pm" in row


@pytest.mark.slow
def test_quickstart_runs_end_to_end_on_the_real_model(tmp_path):
    lines = []
    report = run_quickstart([f"output_dir={tmp_path}", "train.steps=2", "eval.max_samples=4",
                             "eval.max_new_tokens=8"], echo=lines.append, quiet=True)
    assert report.before.exact_match is not None and report.after.exact_match is not None
    assert len(report.result.losses) == 2
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml",
                 "metrics.jsonl", "loss_curve.png"):
        assert (tmp_path / name).is_file(), name
    assert any("lorakit chat --adapter" in line for line in lines)
