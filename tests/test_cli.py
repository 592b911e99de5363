"""The lorakit command: train → eval/generate/chat/inspect on tiny local models, and one-line errors."""
import json

import pytest
import yaml

from lorakit.cli import main


@pytest.fixture
def trained(tmp_path, sft_config):
    """A tiny LoRA run trained through `lorakit train CONFIG`; returns its output dir."""
    config = sft_config("train.steps=2")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["train", str(path)]) == 0
    return config.out


def test_train_writes_adapter_and_eval_json_reports_metrics(trained, sft_files, capsys):
    assert (trained / "adapter" / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "--adapter", str(trained / "adapter"), "--data", sft_files[1], "--json",
                 "--max-new-tokens", "3"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"loss", "perplexity", "exact_match", "rows"}
    assert metrics["rows"] == 2 and 0.0 <= metrics["exact_match"] <= 1.0 and metrics["loss"] > 0


def test_eval_classifier_reports_accuracy(classify_config, classify_files, sft_files, capsys):
    from lorakit.train.loop import train

    config = classify_config("train.steps=3")
    train(config, quiet=True)
    capsys.readouterr()
    assert main(["eval", "--adapter", str(config.out / "adapter"), "--data", classify_files[1], "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "exact_match" not in metrics
    err = _one_line_error(capsys, ["eval", "--adapter", str(config.out / "adapter"), "--data", sft_files[1]])
    assert "chat data cannot evaluate a classifier" in err


def test_generate_and_chat_answer(trained, monkeypatch, capsys):
    adapter = str(trained / "adapter")
    assert main(["generate", "--adapter", adapter, "Lunch with Ana on Friday at noon.", "--max-new-tokens", "3"]) == 0
    replies = iter(["hello", "/reset", "again", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(replies))
    assert main(["chat", "--adapter", adapter, "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("bot> ") == 2


def test_inspect_counts_what_a_config_trains(tiny_lm_dir, capsys):
    assert main(["inspect", str(tiny_lm_dir), "lora.r=2", "lora.target_modules=[q_proj,v_proj]"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.*.self_attn.q_proj" in out and "suggested target_modules" in out
    assert "lora r=2 on ['q_proj', 'v_proj']: 2 modules adapted" in out


@pytest.mark.parametrize("method, section, expect", [
    ("ia3", {}, "ia3 vectors on the preset targets: 3 modules adapted"),
    ("bottleneck", {"placement": "houlsby", "bottleneck_size": 4}, "bottleneck houlsby adapters, width 4: 2 modules"),
])
def test_other_methods_train_eval_generate_chat_and_inspect(method, section, expect, tmp_path, sft_config, sft_files,
                                                             tiny_lm_dir, monkeypatch, capsys):
    config = sft_config("train.steps=2", f"method={method}", drop=("lora",))
    data = {**config.model_dump(mode="json"), method: {**getattr(config, method).model_dump(mode="json"), **section}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path)]) == 0
    adapter = str(config.out / "adapter")
    assert json.loads((config.out / "adapter" / "adapter_config.json").read_text())["peft_type"] == \
        {"ia3": "IA3", "bottleneck": "LORAKIT_BOTTLENECK"}[method]
    capsys.readouterr()
    assert main(["eval", "--adapter", adapter, "--data", sft_files[1], "--json", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    assert main(["generate", "--adapter", adapter, "Lunch with Ana on Friday at noon.", "--max-new-tokens", "2"]) == 0
    replies = iter(["hello", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(replies))
    assert main(["chat", "--adapter", adapter, "--max-new-tokens", "2"]) == 0
    overrides = [f"{method}.{k}={v}" for k, v in section.items()]
    capsys.readouterr()
    assert main(["inspect", str(tiny_lm_dir), f"method={method}", *overrides]) == 0
    assert expect in capsys.readouterr().out


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_unknown_config_key_exits_2_naming_file_line_and_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train: x.jsonl\ntrain:\n  lr: 1e-3\n  epochz: 2\n")
    assert _one_line_error(capsys, ["train", str(path)]) == f"lorakit train: error: {path}:5: train.epochz: unknown key"


def test_bad_data_row_exits_2_naming_file_and_line(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  train: {data}\n")
    err = _one_line_error(capsys, ["train", str(path)])
    assert f"{data}:2" in err and "output" in err


@pytest.mark.parametrize("extra", [[], ["--data", "{good}"], ["--probe"], ["--out", "{tmp}/rows.jsonl"]],
                         ids=["one-file", "two-files", "probe", "out"])
def test_eval_bad_data_row_fails_before_any_model_loads(extra, tmp_path, sft_files, monkeypatch, capsys):
    import lorakit.inference

    monkeypatch.setattr(lorakit.inference, "load_trained", lambda *a, **k: pytest.fail("loaded a model"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    extra = [a.format(good=sft_files[1], tmp=tmp_path) for a in extra]
    err = _one_line_error(capsys, ["eval", "--model", "any", *extra, "--data", str(bad)])
    assert f"{bad}:2" in err and "output" in err
    assert not (tmp_path / "rows.jsonl").exists()


def test_hub_id_while_offline_exits_2(capsys, sft_files):
    err = _one_line_error(capsys, ["eval", "--model", "meta-llama/Llama-3.1-8B", "--data", sft_files[1]])
    assert "does not download from a hub" in err


def test_target_typo_exits_2_naming_the_entry(tiny_lm_dir, capsys):
    err = _one_line_error(capsys, ["inspect", str(tiny_lm_dir), "lora.target_modules=[q_proj,qq_proj]"])
    assert "matched no module: qq_proj" in err


def test_an_internal_error_is_not_passed_off_as_a_user_error(tiny_lm_dir, monkeypatch):
    """Only InputError (and file errors) are one-line exits; a bug's ValueError keeps its traceback."""
    from lorakit.train import prepare

    def broken(model, config):
        raise ValueError("internal bug")

    monkeypatch.setattr(prepare, "attach_method", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["inspect", str(tiny_lm_dir)])


def test_debug_shows_the_traceback(tmp_path):
    from lorakit.strict import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text("nonsense: 1\n")
    with pytest.raises(ConfigError):
        main(["--debug", "train", str(path)])


def test_adapter_must_be_an_adapter_dir_and_debug_may_follow_the_command(tmp_path, capsys, sft_files):
    from lorakit.io import AdapterFormatError

    argv = ["eval", "--adapter", str(tmp_path), "--data", sft_files[1]]
    assert "not an adapter directory" in _one_line_error(capsys, argv)
    with pytest.raises(AdapterFormatError):
        main([*argv, "--debug"])


def test_train_help_lists_every_config_key_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in ("train.lr = 0.0002", "data.max_tokens", "model.quantization", "lora.r", "eval.max_new_tokens"):
        assert key in out
    assert "Peak learning rate." in out


def test_merge_writes_a_transformers_model_that_reproduces_the_adapter(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from helpers import logits
    from lorakit.inference import load_trained

    adapted = load_trained(trained / "adapter").model
    assert main(["merge", str(trained / "adapter"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.randint(0, 1000, (2, 12))
    torch.testing.assert_close(logits(merged, ids), logits(adapted, ids), atol=1e-5, rtol=1e-5)
    assert main(["generate", "--model", str(tmp_path / "merged"), "hi", "--max-new-tokens", "2"]) == 0


VIRTUAL_TOKENS = {  # method: overrides of a tiny run (trained by the sft_config fixture's data)
    "prompt_tuning": ("prompt_tuning.num_virtual_tokens=4", "prompt_tuning.prompt_tuning_init=TEXT",
                      "prompt_tuning.prompt_tuning_init_text=Calendar note to record"),
    "p_tuning": ("p_tuning.num_virtual_tokens=3", "p_tuning.encoder_reparameterization_type=LSTM"),
    "prefix_tuning": ("prefix_tuning.num_virtual_tokens=3", "prefix_tuning.prefix_projection=true"),
}


@pytest.mark.parametrize("method", list(VIRTUAL_TOKENS))
def test_virtual_token_methods_train_eval_generate_chat_inspect(method, tmp_path, sft_config, sft_files,
                                                                monkeypatch, capsys):
    config = sft_config("train.steps=2", f"method={method}", *VIRTUAL_TOKENS[method], drop=("lora",))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["train", str(path)]) == 0
    adapter = str(config.out / "adapter")
    capsys.readouterr()
    assert main(["eval", "--adapter", adapter, "--data", sft_files[1], "--json", "--max-new-tokens", "3"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"loss", "perplexity", "exact_match", "rows"}
    assert main(["generate", "--adapter", adapter, "Lunch with Ana on Friday at noon.", "--max-new-tokens", "3"]) == 0
    replies = iter(["hello", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(replies))
    assert main(["chat", "--adapter", adapter, "--max-new-tokens", "3"]) == 0
    assert main(["inspect", "--config", str(path)]) == 0
    assert f"{method}" in capsys.readouterr().out
    err = _one_line_error(capsys, ["merge", adapter, str(tmp_path / "merged")])
    assert "adds virtual tokens" in err and "no weight update to merge" in err
def test_unknown_adapter_config_field_warns_once_in_one_line(trained, capsys):
    import json as json_

    adapter = trained / "adapter"
    config = json_.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json_.dumps({**config, "shiny_new_peft_option": 3}))
    capsys.readouterr()
    assert main(["generate", "--adapter", str(adapter), "hi", "--max-new-tokens", "2"]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if "shiny_new_peft_option" in l]
    assert len(warnings) == 1 and warnings[0].startswith("lorakit generate: warning: ")


def test_allow_pickle_reads_a_bin_only_adapter_with_a_warning(trained, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    adapter = tmp_path / "legacy"
    shutil.copytree(trained / "adapter", adapter)
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    argv = ["generate", "--adapter", str(adapter), "hi", "--max-new-tokens", "2"]
    assert "--allow-pickle" in _one_line_error(capsys, argv)
    assert main([*argv, "--allow-pickle"]) == 0
    assert "warning: " in capsys.readouterr().err


def test_merge_overwrite_replaces_the_whole_directory(trained, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "model-00001-of-00009.safetensors").write_text("stale")
    assert main(["merge", str(trained / "adapter"), str(out)]) == 2
    assert main(["merge", str(trained / "adapter"), str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "model-00001-of-00009.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
