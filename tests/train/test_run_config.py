"""The run config: typed at the edge, unknown keys named by dotted path, every shipped config valid."""
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from lorakit.models import resolve
from lorakit.strict import ConfigError
from lorakit.train.config import RunConfig
from lorakit.train.prepare import load_data
from lorakit.yamlconfig import load_config

ROOT = Path(__file__).parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".yml"))
MINIMAL = {"data": {"train": "bundled:quickstart_train"}}


def _load(*overrides, base=MINIMAL, path=None):
    return load_config(RunConfig, path, list(overrides), base=yaml.safe_load(yaml.safe_dump(base)))


def test_configs_directory_is_not_empty():
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates_and_its_data_and_model_exist(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name data files relative to the repository root
    config = load_config(RunConfig, str(path))
    load_data(config)  # every row of train and eval read and validated for the config's task
    assert resolve(config.model.name).exists()


@pytest.mark.parametrize("override, dotted", [
    ("train.lrr=1e-3", "train.lrr"),
    ("lora.rank=4", "lora.rank"),
    ("model.dtpye=float32", "model.dtpye"),
    ("epochs=3", "epochs"),
])
def test_unknown_key_error_names_its_dotted_path(override, dotted):
    with pytest.raises(ConfigError, match=rf"{dotted.replace('.', '[.]')}: unknown key"):
        _load(override)


def test_unknown_key_in_a_file_names_file_line_and_path(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("data:\n  train: bundled:quickstart_train\ntrain:\n  steps: 3\n  warmup: 2\n")
    with pytest.raises(ConfigError, match=rf"{f}:5: train[.]warmup: unknown key"):
        load_config(RunConfig, str(f))


def test_bad_value_names_its_dotted_path():
    with pytest.raises(ConfigError, match=r"train[.]lr: .*greater than 0"):
        _load("train.lr=-1")
    with pytest.raises(ConfigError, match=r"train[.]schedule"):
        _load("train.schedule=exponential")


def test_dotted_overrides_parse_as_yaml_values():
    config = _load("train.lr=1e-3", "train.steps=5", "train.max_grad_norm=null", "lora.target_modules=[q_proj, v_proj]",
                   "model.gradient_checkpointing=true", "train.schedule=linear", "lora.lora_dropout=0.1",
                   "output_dir=runs/x")
    assert config.train.lr == 1e-3 and config.train.steps == 5 and config.train.max_grad_norm is None
    assert config.lora.target_modules == ["q_proj", "v_proj"] and config.lora.lora_dropout == 0.1
    assert config.model.gradient_checkpointing is True and config.train.schedule == "linear"
    assert config.out == Path("runs/x")


def test_overrides_win_over_the_file_and_keep_its_other_keys(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("data:\n  train: bundled:quickstart_train\n  max_length: 64\ntrain:\n  lr: 0.1\n  steps: 9\n")
    config = load_config(RunConfig, str(f), ["train.lr=0.5", "data.eval=bundled:quickstart_eval"])
    assert (config.train.lr, config.train.steps) == (0.5, 9)
    assert (config.data.max_length, config.data.eval) == (64, "bundled:quickstart_eval")


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        _load("train.lr")


def test_classification_task_rejects_chat_formats():
    with pytest.raises(ConfigError, match="classification"):
        _load("task=classification", "data.format=alpaca")


@pytest.mark.parametrize("overrides, section", [
    (("lora.r=4", "method=vera"), "lora"),
    (("vera.r=16",), "vera"),
    (("adalora.init_r=8", "method=vera"), "adalora"),
])
def test_settings_of_another_method_are_an_error(overrides, section):
    with pytest.raises(ConfigError, match=f"`{section}:` settings are given but method is"):
        _load(*overrides)


def test_each_adapter_method_uses_its_own_section():
    assert _load("method=vera", "vera.r=16").adapter.r == 16
    assert _load("method=adalora", "adalora.init_r=8").adapter.init_r == 8
    assert _load("lora.r=4").adapter.r == 4


def test_pissa_with_dora_is_rejected_before_training():
    with pytest.raises(ConfigError, match="PiSSA with use_dora") as e:
        _load("lora.init_lora_weights=pissa", "lora.use_dora=true")
    assert str(e.value).startswith("config: lora.init_lora_weights: PiSSA")  # no empty key, no pydantic prefix


def test_resolved_config_round_trips_through_yaml():
    config = _load("train.steps=3", "lora.r=4", "lora.target_modules=[q_proj]")
    again = load_config(RunConfig, None, base=yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert again == config


def _options(model: type[BaseModel], prefix=""):
    """(dotted name, field) of every leaf option; sections are walked into."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _options(field.annotation, prefix + name + ".")
        else:
            yield prefix + name, field


def test_every_option_has_a_description_for_help():
    missing = [name for name, field in _options(RunConfig) if not field.description]
    assert not missing


def test_overrides_leave_the_base_dict_alone():
    base = {"data": {"train": "x.jsonl"}, "lora": {"r": 16}}
    assert load_config(RunConfig, None, ["lora.r=4", "data.train=y.jsonl"], base=base).lora.r == 4
    assert base == {"data": {"train": "x.jsonl"}, "lora": {"r": 16}}
