"""The user's files: accepted encodings, JSON, output-directory checks, safetensors header checks."""
import codecs
import json

import pytest
import torch
from safetensors.torch import save_file

from lorakit.data import load_dataset
from lorakit.errors import InputError
from lorakit.files import check_output_dir, decode_text, read_json, read_text
from lorakit.io.shards import check_safetensors

ROW = {"instruction": "Caf\u00e9 \u2014 \u00bfqu\u00e9?", "output": "\u00fcber"}
TEXT = json.dumps(ROW, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("encoded", [
    TEXT.encode("utf-8"), codecs.BOM_UTF8 + TEXT.encode("utf-8"), TEXT.encode("utf-16"),  # (BOM included)
    codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), TEXT.encode("utf-32"),
], ids=["utf8", "utf8-bom", "utf16-le-bom", "utf16-be-bom", "utf32-bom"])
def test_utf8_and_bom_marked_unicode_files_read_the_same(tmp_path, encoded):
    path = tmp_path / "train.jsonl"
    path.write_bytes(encoded)
    assert read_text(path) == TEXT
    assert load_dataset(path).rows[0][-1]["content"] == "\u00fcber"


def test_a_config_with_a_bom_loads(tmp_path):
    from lorakit.train.config import RunConfig
    from lorakit.yamlconfig import load_config

    path = tmp_path / "run.yaml"
    path.write_bytes(codecs.BOM_UTF8 + b"data:\n  train: x.jsonl\ntrain:\n  lr: 1e-3\n")
    assert load_config(RunConfig, str(path)).train.lr == 1e-3  # (YAML 1.2 number, not a string)


@pytest.mark.parametrize("data, offset", [(b"ab\xe9cd", 2), (b"ok\nhalf \xc3", 8), (b"\x00{}", 0), (b"{\x80\x00", 1)])
def test_other_bytes_are_named_by_offset(data, offset):
    with pytest.raises(InputError, match=f"f.txt: .*byte {offset}"):
        decode_text(data, "f.txt")


def test_read_json_names_line_and_type(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{\n  "a": 1,\n}')
    with pytest.raises(InputError, match=r"x.json:3: invalid JSON"):
        read_json(path)
    path.write_text("[1]")
    with pytest.raises(InputError, match="expected an object, got an array"):
        read_json(path, expect=dict)


def test_output_dir_checks_create_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    for path, message in [(tmp_path / "file", "not a directory"), (tmp_path / "file" / "sub", "is a file"),
                          (tmp_path / "full", "not empty")]:
        with pytest.raises(InputError, match=message):
            check_output_dir(path, "out", must_be_empty=True)
    assert check_output_dir(tmp_path / "new" / "deeper", "out") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]


def test_safetensors_header_is_checked_against_the_file_size(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(3)}, path)
    assert {k: v["shape"] for k, v in check_safetensors(path).items()} == {"a": [4, 4], "b": [3]}
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    with pytest.raises(InputError, match=f"truncated: its tensors need {len(data)} bytes"):
        check_safetensors(path)
