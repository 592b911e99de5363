"""Bad `train.device` / precision / `train.compile` settings: one line, exit 2, before anything is written."""
import pytest
import torch

from bad_inputs.harness import Cli, check_cli, table
from lorakit.train import compiled

CFG = "{tmp}/run.yaml"


def cfg(changes):
    return lambda env: env.config(changes)


ROWS = [
    Cli("device-unknown", ["train", CFG], [CFG, "train.device"], setup=cfg({"train": {"device": "gpu"}})),
    Cli("device-cuda-negative-index", ["train", CFG], [CFG, "train.device"],
        setup=cfg({"train": {"device": "cuda:-1"}})),
    Cli("device-override-unknown", ["train", CFG, "train.device=tpu"], ["train.device"], setup=cfg({})),
    Cli("float16-full-finetuning", ["train", CFG], [CFG, "model.dtype", "float16"],
        setup=cfg({"method": "full", "model": {"dtype": "float16"}})),
    Cli("float16-fsdp", ["train", CFG, "train.distributed=fsdp"], ["model.dtype", "float16", "fsdp"],
        setup=cfg({"model": {"dtype": "float16"}})),
    Cli("float16-trained-copy", ["train", CFG], ["model.dtype: float16", "lm_head"],
        setup=cfg({"model": {"dtype": "float16"}, "lora": {"modules_to_save": ["lm_head"]}})),
]
NO_CUDA_ROWS = [  # on a machine with CUDA these are valid runs
    Cli("device-cuda-without-cuda", ["train", CFG], ["train.device: cuda", "CUDA is not available"],
        setup=cfg({"train": {"device": "cuda"}})),
    Cli("device-cuda-index-without-cuda", ["train", CFG, "train.device=cuda:1"], ["train.device: cuda:1"],
        setup=cfg({})),
]


@pytest.mark.parametrize("row", table(ROWS) + [
    pytest.param(*p.values, id=p.id, marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there"))
    for p in table(NO_CUDA_ROWS)])
def test_bad_device(row, env, capsys):
    check_cli(row, env, capsys)


def test_compile_without_a_cxx_compiler(env, capsys, monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)  # a machine with no g++ / c++ / clang++
    check_cli(Cli("compile-without-cxx", ["train", CFG], ["train.compile", "C++ compiler"],
                  setup=cfg({"train": {"compile": True}})), env, capsys)
