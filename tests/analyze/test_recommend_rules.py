"""`recommend`: each rule of the table, and the reasons cite README sections that exist."""
import json
from pathlib import Path

import pytest

from lorakit.analyze.memory import Dtype, Method, load_shape
from lorakit.analyze.recommend import (FIT_RULES, LR_RULES, METHOD_RULES, QLORA_REASON, RANK_RULES, Task,
                                       parse_params, recommend, shape_for_params)
from lorakit.errors import InputError

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_small_data_with_room_gets_lora_without_checkpointing():
    rec = recommend(load_shape("llama-2-7b"), memory_gb=80, examples=5000, dtype=Dtype.BFLOAT16)
    assert rec.method is Method.LORA and rec.settings["gradient_checkpointing"] is False
    assert rec.settings["r"] == 16 and rec.settings["lr"] == 2e-4
    assert [n for n, _ in rec.reasons][:2] == ["small-data-adapter", "no-checkpointing-first"]


def test_large_data_with_room_gets_full_fine_tuning():
    rec = recommend(load_shape("llama-2-7b"), memory_gb=200, examples=200_000, dtype=Dtype.BFLOAT16)
    assert rec.method is Method.FULL and rec.settings["lr"] == 2e-4 and "r" not in rec.settings


def test_tight_memory_falls_back_to_qlora_then_checkpointing():
    qlora = recommend(load_shape("llama-2-7b"), memory_gb=12, examples=5000, dtype=Dtype.BFLOAT16)
    assert qlora.method is Method.QLORA and "qlora-when-lora-does-not-fit" in dict(qlora.reasons)
    tighter = recommend(load_shape("llama-2-7b"), memory_gb=6, examples=5000, dtype=Dtype.BFLOAT16)
    assert tighter.method is Method.QLORA and tighter.settings["gradient_checkpointing"] is True
    assert tighter.estimate_bytes <= 6 * 2**30


def test_nothing_fits_says_so():
    rec = recommend(load_shape("llama-2-70b"), memory_gb=8, examples=5000)
    assert rec.method is None and rec.reasons[-1][0] == "does-not-fit"
    json.dumps(rec.to_dict())


def test_classification_and_small_data_rules():
    rec = recommend(load_shape("llama-2-7b"), memory_gb=80, examples=600, task=Task.CLASSIFICATION,
                    dtype=Dtype.BFLOAT16)
    assert rec.settings["r"] == 8 and rec.settings["lr"] == 2e-3


def test_every_reason_cites_a_readme_section_that_exists():
    for rule in (*METHOD_RULES, *FIT_RULES, *RANK_RULES, *LR_RULES):
        assert "README" in rule.reason, rule.name
    assert "README" in QLORA_REASON
    for section in ("## Analysis tools", "## Benchmarks", "## The quickstart"):
        assert section in README
    for figure in ("93.3%", "89.3%", "14.3", "21.5"):
        assert figure in README


def test_params_parse_to_a_shape_of_that_size():
    assert parse_params("7B") == 7_000_000_000 and parse_params("135m") == 135_000_000
    for size in ("7B", "30B", "1B"):
        shape = shape_for_params(parse_params(size))
        assert shape.parameters() == pytest.approx(parse_params(size), rel=0.15)
    with pytest.raises(InputError, match="7X"):
        parse_params("7X")


def test_cli_recommend_json(capsys):
    from lorakit.cli import main

    assert main(["recommend", "--params", "7B", "--memory-gb", "24", "--examples", "5000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] in ("lora", "qlora") and all(r["reason"] for r in out["reasons"])


def test_strings_from_python_callers_are_parsed():
    rec = recommend(load_shape("llama-2-7b"), memory_gb=80, examples=600, task="classification", dtype="bfloat16")
    assert rec.settings["r"] == 8
    with pytest.raises(InputError, match="chat"):
        recommend(load_shape("llama-2-7b"), memory_gb=80, examples=600, task="chat")
