"""Task prefixes of a multi-task run travel with the adapter (task_prefixes.json) and are applied again by
eval (`--data TASK=FILE`, eval.suites), generate / chat (`--task`) and the Python API."""
import json

import pytest

from lorakit.cli import main
from lorakit.data.formats import load_dataset
from lorakit.data.prefixes import Suite, parse_suite, prefix_messages, source_task_name, with_prefix
from lorakit.errors import InputError
from lorakit.inference import load_trained, task_prefix
from lorakit.io import TASKS_NAME, read_task_prefixes
from lorakit.train.evaluate import evaluate_dataset
from lorakit.train.forgetting import evaluate_suites
from lorakit.train.loop import train


@pytest.fixture(scope="module")
def multitask_adapter(tmp_path_factory, tiny_lm_dir, sft_files):
    """A 2-step LoRA run on two prefixed sources (one named, one by its file stem)."""
    from lorakit.train.config import RunConfig
    from lorakit.yamlconfig import load_config

    out = tmp_path_factory.mktemp("multitask")
    config = load_config(RunConfig, None, [], base={
        "model": {"name": str(tiny_lm_dir)},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": [{"file": sft_files[0], "prefix": "[notes] ", "name": "notes"},
                           {"file": sft_files[1], "prefix": "[other] "}],
                 "max_length": 64, "max_tokens": 128},
        "train": {"steps": 2, "lr": 1e-2, "schedule": "constant"},
        "eval": {"generate": False},
        "output_dir": str(out / "run"),
    })
    return train(config, quiet=True).adapter_dir


def test_parse_suite_splits_task_from_file(tmp_path, monkeypatch):
    assert parse_suite("notes=bundled:quickstart_eval") == Suite("bundled:quickstart_eval", "notes")
    assert parse_suite("notes=bundled:quickstart_eval").name == "notes=quickstart_eval"
    assert parse_suite("bundled:quickstart_eval") == Suite("bundled:quickstart_eval")
    assert parse_suite("runs/a=b/eval.jsonl") == Suite("runs/a=b/eval.jsonl")  # not a task name before '='
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x=y.jsonl").write_text("{}\n")
    assert parse_suite("x=y.jsonl") == Suite("x=y.jsonl")  # an existing file is a file
    with pytest.raises(InputError, match="no data file after 'notes='"):
        parse_suite("notes=")


def test_prefix_goes_in_front_of_the_first_user_message_only():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}]
    assert [m["content"] for m in prefix_messages(messages, "[t] ")] == ["s", "[t] u1", "a", "u2"]
    assert messages[1]["content"] == "u1"
    assert source_task_name("bundled:contacts_train") == "contacts_train"
    assert source_task_name("/data/my tasks/orders.v2.jsonl") == "orders.v2"


def test_run_records_every_sources_prefix_by_task_name(multitask_adapter, sft_files):
    record = json.loads((multitask_adapter / TASKS_NAME).read_text())
    assert record == {"tasks": {"notes": "[notes] ", "eval": "[other] "}}
    assert read_task_prefixes(multitask_adapter) == record["tasks"]
    trained = load_trained(multitask_adapter)
    assert trained.prefixes == record["tasks"]
    assert task_prefix(trained, "notes") == "[notes] " and task_prefix(trained, None) == ""
    with pytest.raises(InputError, match="'nope' is not one .* its tasks: eval, notes"):
        task_prefix(trained, "nope")


def test_run_without_prefixes_writes_no_record(sft_config):
    result = train(sft_config("train.steps=1", "data.eval=null"), quiet=True)
    assert not (result.adapter_dir / TASKS_NAME).exists()
    assert load_trained(result.adapter_dir).prefixes == {}


def test_eval_of_a_task_uses_its_prefix(multitask_adapter, sft_files, capsys):
    trained = load_trained(multitask_adapter)
    plain = load_dataset(sft_files[1])
    expected = evaluate_dataset(trained.model, trained.tokenizer, with_prefix(plain, "[notes] "), generate=False)
    bare = evaluate_dataset(trained.model, trained.tokenizer, plain, generate=False)
    assert expected.loss != pytest.approx(bare.loss)

    assert main(["eval", "--adapter", str(multitask_adapter), "--data", f"notes={sft_files[1]}", "--json",
                 "--max-new-tokens", "2"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["loss"] == pytest.approx(expected.loss, rel=1e-5)

    with pytest.warns(UserWarning, match="scored without one"):
        rows = evaluate_suites(trained, [f"notes={sft_files[1]}", sft_files[1]])
    assert [r["suite"] for r in rows] == [f"notes={sft_files[1]}", sft_files[1]]
    assert rows[0]["loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert rows[1]["loss"] == pytest.approx(bare.loss, rel=1e-5)


def test_eval_without_a_task_warns_once(multitask_adapter, sft_files, capsys):
    assert main(["eval", "--adapter", str(multitask_adapter), "--data", sft_files[1], "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "task prefixes" in err[0] and "--data TASK=" in err[0]


def test_eval_suites_from_the_run_config_name_tasks(multitask_adapter, sft_files, tmp_path, capsys):
    import yaml

    run_config = yaml.safe_load((multitask_adapter.parent / "config.yaml").read_text())
    run_config["eval"]["suites"] = [f"eval={sft_files[1]}"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config))
    assert main(["eval", "--adapter", str(multitask_adapter), "--config", str(tmp_path / "run.yaml"),
                 "--out", str(tmp_path / "m.jsonl"), "--max-new-tokens", "2"]) == 0
    row = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert row["suite"] == f"eval={sft_files[1]}"


def test_generate_and_chat_put_the_task_prefix_in_front(multitask_adapter, monkeypatch, capsys):
    import lorakit.inference

    prompts = []
    monkeypatch.setattr(lorakit.inference, "generate",
                        lambda trained, prompt, *a, **k: prompts.append(prompt) or "ok")
    assert main(["generate", "--adapter", str(multitask_adapter), "--task", "eval", "Lunch at noon."]) == 0
    assert main(["generate", "--adapter", str(multitask_adapter), "Lunch at noon."]) == 0
    lines = iter(["first", "second", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--adapter", str(multitask_adapter), "--task", "notes"]) == 0
    assert prompts[:2] == ["[other] Lunch at noon.", "Lunch at noon."]
    first, second = prompts[2:]
    assert [m["content"] for m in first] == ["[notes] first"]
    assert [m["content"] for m in second if m["role"] == "user"] == ["[notes] first", "second"]


def test_dashboard_path_check_reads_the_file_of_a_task_suite(tmp_path):
    from lorakit.ui.forms import PathPolicy

    policy = PathPolicy([tmp_path])
    assert policy.check({"eval": {"suites": [f"notes={tmp_path}/e.jsonl", "notes=bundled:quickstart_eval"]}}) == {}
    assert "outside" in policy.check({"eval": {"suites": ["notes=/etc/e.jsonl"]}})["eval.suites"]
