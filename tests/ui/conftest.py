"""Fixtures for the dashboard tests: a runs directory with real tiny runs (trained by `lorakit.train`
on the suite's tiny Llama over SmolLM2's tokenizer), a live one, a failed one; a data directory
holding the data and the tiny base; a configs directory; and the dashboard served by uvicorn on
127.0.0.1.

A few steps on a hidden-16 model leave two adapters that answer alike (both repeat one token), so
after training each run's `lora_B` is redrawn at random (seeded per run): the playground tests
need adapters whose greedy answers differ."""
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml


pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

RUN_STEPS = 4


def tiny_run_config(data: Path, out: Path, **train) -> dict:
    return {
        "model": {"name": str(data / "tiny-base")},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"), "max_length": 64,
                 "max_tokens": 128},
        "train": {"steps": RUN_STEPS, "lr": 2e-2, "schedule": "constant", "eval_every": 2, "save_every": 2, **train},
        "eval": {"max_new_tokens": 4, "generate": False},
        "output_dir": str(out),
    }


def write_live_run(runs: Path, name: str = "live", rows: int = 3) -> Path:
    """A run "in progress": a config and a few train rows, no adapter (metrics just written)."""
    run = runs / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "sft", "method": "lora", "model": {"name": "m"},
                                                     "train": {"steps": 50, "lr": 1e-3}, "data": {"train": "x"}}))
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, rows + 1):
            f.write(json.dumps({"split": "train", "step": step, "loss": 3.0 / step, "lr": 1e-3}) + "\n")
    return run


def redraw_lora_b(adapter: Path, seed: int) -> None:
    """Replace every lora_B tensor of a saved adapter with seeded noise (std 1), in place."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for key, value in tensors.items():
        if ".lora_B." in key:
            tensors[key] = torch.randn(value.shape, generator=generator).to(value.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="session")
def ui_root(tmp_path_factory, tiny_lm_dir, sft_files):
    """`runs/` (alpha, beta: trained; live; broken), `data/` (tiny-base, train/eval.jsonl), `configs/`."""
    from lorakit.train.config import RunConfig
    from lorakit.train.loop import train
    from lorakit.yamlconfig import load_config

    root = tmp_path_factory.mktemp("ui")
    data, runs, configs = root / "data", root / "runs", root / "configs"
    for d in (data, runs, configs):
        d.mkdir()
    shutil.copytree(tiny_lm_dir, data / "tiny-base")
    shutil.copy(sft_files[0], data / "train.jsonl")
    shutil.copy(sft_files[1], data / "eval.jsonl")
    for seed, (name, train_options) in enumerate((("alpha", {}), ("beta", {"lr": 5e-2, "seed": 1}))):
        config = tiny_run_config(data, runs / name, **train_options)
        if name == "beta":
            config["lora"]["r"] = 8
        train(load_config(RunConfig, None, [], base=config), quiet=True)
        redraw_lora_b(runs / name / "adapter", seed)
    example = tiny_run_config(data, runs / "unused")
    example.pop("output_dir")
    (configs / "tiny.yaml").write_text(yaml.safe_dump(example, sort_keys=False))
    write_live_run(runs)
    broken = runs / "broken"
    broken.mkdir()
    (broken / "launch.yaml").write_text(yaml.safe_dump({"data": {"train": "missing.jsonl"}}))
    (broken / "launch.json").write_text(json.dumps({"pid": 2**22 + 12345, "started": time.time() - 60,
                                                    "exit_code": 2, "stopped": False}))
    (broken / "train.log").write_text("lorakit train: error: data.train: file not found: missing.jsonl\n")
    return root


@pytest.fixture(scope="module")
def ui_server(ui_root):
    """The `lorakit ui` app over ui_root (no model loaded at start), served on 127.0.0.1; yields its URL."""
    from serve.serve_helpers import running
    from lorakit.ui.launch import UiOptions, build_ui_app

    options = UiOptions(runs=str(ui_root / "runs"), data=[str(ui_root / "data")], configs=str(ui_root / "configs"),
                        max_model_len=256)
    app = build_ui_app(options)
    with running(app) as url:
        yield url
