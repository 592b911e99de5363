"""Streaming safetensors I/O: shards written tensor by tensor, read back by safetensors; staged output dirs."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.io.shards import (
    CheckpointReader, OutputExistsError, ShardWriter, check_output_directory, staged_directory,
)


def _tensors():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(30, 7), "b.bias": torch.randn(5).to(torch.bfloat16),
            "c.ids": torch.arange(11, dtype=torch.int64), "d.scalar": torch.tensor(2.5, dtype=torch.float16),
            "e.empty": torch.zeros(0, 3)}


@pytest.mark.parametrize("limit", [10 ** 9, 100])
def test_shards_written_out_of_order_read_back_exactly(tmp_path, limit):
    tensors = _tensors()
    writer = ShardWriter(tmp_path, [(k, tuple(t.shape), t.dtype) for k, t in tensors.items()], max_shard_bytes=limit)
    for key in reversed(list(tensors)):
        writer.write(key, tensors[key])
    files = writer.close()
    if limit > 10 ** 6:
        assert [f.name for f in files] == ["model.safetensors"]
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors) and sum(f.suffix == ".safetensors" for f in files) == 2
    back = {}
    for f in files:
        if f.suffix == ".safetensors":
            back.update(load_file(f))
    reader = CheckpointReader(tmp_path)
    for key, t in tensors.items():
        assert back[key].dtype == t.dtype and torch.equal(back[key], t)
        assert torch.equal(reader.read(key), t)


def test_writer_checks_shapes_and_completeness(tmp_path):
    writer = ShardWriter(tmp_path, [("x", (2, 2), torch.float32), ("y", (3,), torch.float32)])
    with pytest.raises(ValueError, match="planned"):
        writer.write("x", torch.zeros(2, 3))
    writer.write("x", torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="never written, e.g. y"):
        writer.close()


def test_staged_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(target) as staging:
            (staging / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert (target / "old.txt").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert target.stat().st_mode & 0o755 == 0o755


def test_output_directory_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        check_output_directory(tmp_path / "file", overwrite=True)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_directory(tmp_path / "full", overwrite=False)
    with pytest.raises(OutputExistsError, match="is \\(or holds\\) the input"):
        check_output_directory(tmp_path / "full", overwrite=True, inputs=[tmp_path / "full" / "model"])
    assert check_output_directory(tmp_path / "full", overwrite=True) == tmp_path / "full"


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    import os

    from lorakit.files import atomic_write

    atomic_write(tmp_path / "a.bin", lambda f: open(f, "wb").write(b"x"))
    (tmp_path / "b.bin").write_bytes(b"x")
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == (tmp_path / "b.bin").stat().st_mode & 0o777
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
