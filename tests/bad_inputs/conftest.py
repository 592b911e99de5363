"""Fixtures of the bad-input table: shared read-only assets (built once) and each row's own `Env`."""
import shutil
from pathlib import Path

import pytest

from bad_inputs.harness import RUN_CHANGES, Assets, Env, deep_merge, good_run_config


@pytest.fixture(scope="session")
def bad_input_assets(tmp_path_factory, sft_files, classify_files):
    """A tiny Llama with a character-level tokenizer, a LoRA adapter for it (non-zero B), good data files
    and a finished 2-step run, all under one read-only folder."""
    from transformers import AutoModelForCausalLM

    import lorakit
    from helpers import randomize_lora_b, tiny_char_lm_dir

    root = tmp_path_factory.mktemp("bad-input-assets")
    texts = [Path(f).read_text(encoding="utf-8") for f in (*sft_files, *classify_files)]
    tiny_lm_dir = tiny_char_lm_dir(root / "model", texts)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    lorakit.inject(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    randomize_lora_b(model)
    adapter = lorakit.save_adapter(model, root / "adapter", base_model_name_or_path=str(tiny_lm_dir))
    files = {}
    for name, source in (("train", sft_files[0]), ("eval", sft_files[1]), ("classify_train", classify_files[0])):
        files[name] = root / f"{name}.jsonl"
        shutil.copy(source, files[name])
    assets = Assets(root=root, model=tiny_lm_dir, adapter=adapter, run=root / "run", **files)
    _finished_run(assets)
    return assets


def _finished_run(assets: Assets) -> None:
    from lorakit.train.config import RunConfig
    from lorakit.train.loop import train
    from lorakit.yamlconfig import load_config

    config = deep_merge(good_run_config(assets, assets.run), RUN_CHANGES)
    train(load_config(RunConfig, None, [], base=config), quiet=True)


@pytest.fixture
def env(tmp_path, bad_input_assets, monkeypatch):
    """The row's directory (also the working directory); the GGUF cache lives inside it, so it is watched.
    A `lorakit serve` row that got past its checks would serve forever: starting uvicorn fails the row."""
    import uvicorn

    def no_server(self, *args, **kwargs):
        raise AssertionError("the bad input was accepted: lorakit serve started a server")

    monkeypatch.setattr(uvicorn.Server, "run", no_server)
    work = tmp_path / "row"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LORAKIT_CACHE", str(work / "cache"))
    return Env(work, bad_input_assets)
