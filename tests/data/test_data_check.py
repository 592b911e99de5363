"""`lorakit data check`: every bad row with the trainer's message, duplicates, lengths as the trainer counts them."""
import json

import pytest

from lorakit.cli import main
from lorakit.data.check import Severity, check_file
from lorakit.data.formats import load_dataset
from lorakit.data.io import DataError
from lorakit.data.tokenize import encode_dataset


def write(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def codes(report, severity=None):
    return [(f.code, f.where.rsplit(":", 1)[-1]) for f in report.findings if severity in (None, f.severity)]


GOOD = [{"instruction": f"Add {i} and {i + 1}.", "output": str(2 * i + 1)} for i in range(4)]


def test_every_bad_row_is_reported_with_the_trainers_message(tmp_path):
    path = write(tmp_path / "d.jsonl", GOOD[0], {"instruction": "x"}, "{not json", GOOD[1],
                 {"instruction": "y", "output": 3})
    report = check_file(path, tokenizer=False)
    assert codes(report, Severity.ERROR) == [("invalid-json", "3"), ("invalid-row", "2"), ("invalid-row", "5")]
    with pytest.raises(DataError) as trainer:  # the trainer stops at the first bad row, with the same words
        load_dataset(tmp_path / "d.jsonl")
    assert trainer.value.args[0].startswith(str(path) + ":")
    messages = {f"{f.where}: {f.message}" for f in report.findings}
    first_row_error = str(DataError(f"{path}:2: missing key 'output' (alpaca format)"))
    assert first_row_error in messages
    assert report.rows == 5 and report.valid_rows == 2


def test_empty_outputs_are_errors_and_a_clean_file_has_none(tmp_path):
    clean = check_file(write(tmp_path / "ok.jsonl", *GOOD), tokenizer=False)
    assert clean.errors == [] and clean.warnings == []
    report = check_file(write(tmp_path / "e.jsonl", GOOD[0], {"instruction": "Say it.", "output": "  \n"}),
                        tokenizer=False)
    assert codes(report) == [("empty-target", "2")]


def test_exact_near_and_conflicting_duplicates(tmp_path):
    long = "Please book a table for lunch with Ana at the corner cafe on Friday at noon, thanks"
    rows = [{"instruction": long + ".", "output": "lunch|Ana|Fri"},
            {"instruction": "  " + long.upper() + ".", "output": "LUNCH|ANA|FRI"},  # exact (normalised)
            {"instruction": long + "!", "output": "lunch|Ana|Fri"},                # near
            {"instruction": "Write a haiku about rain.", "output": "a"},
            {"instruction": "Write a haiku about rain.", "output": "b"}]          # same prompt
    report = check_file(write(tmp_path / "d.jsonl", *rows), tokenizer=False)
    assert ("exact-duplicate", "2") in codes(report) and ("near-duplicate", "3") in codes(report)
    assert ("conflicting-answers", "5") in codes(report)
    near = next(f for f in report.findings if f.code == "near-duplicate")
    assert "of line 1" in near.message
    assert not report.errors
    exact_only = check_file(tmp_path / "d.jsonl", tokenizer=False, near=None)
    assert "near-duplicate" not in {c for c, _ in codes(exact_only)}


def test_token_lengths_are_the_trainers(tmp_path, tiny_char_model):
    path = write(tmp_path / "d.jsonl", *GOOD, {"instruction": "long " * 30, "output": "ok"})
    report = check_file(path, model=str(tiny_char_model), max_length=64)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_char_model)
    _, stats = encode_dataset(tok, load_dataset(path), max_length=10_000)
    assert report.lengths == stats.lengths
    assert report.length_stats.max == max(stats.lengths) and report.length_stats.over_max_length == 1
    _, truncated = encode_dataset(tok, load_dataset(path), max_length=64)
    dropped = ["no-target-after-truncation"] * truncated.dropped_no_target
    assert [c for c, _ in codes(report)] == ["over-max-length", *dropped]
    assert codes(report)[0] == ("over-max-length", "5")


def test_a_reply_beyond_max_length_is_reported_as_dropped(tmp_path, tiny_char_model):
    path = write(tmp_path / "d.jsonl", {"instruction": "x" * 80, "output": "y"})
    report = check_file(path, model=str(tiny_char_model), max_length=40)
    assert [c for c, _ in codes(report)] == ["over-max-length", "no-target-after-truncation"]


def test_label_balance_and_types(tmp_path):
    rows = [{"text": f"t{i}", "label": "a"} for i in range(11)] + [{"text": "u", "label": "b"}]
    report = check_file(write(tmp_path / "c.jsonl", *rows), tokenizer=False)
    assert report.kind == "classification" and report.labels == {"a": 11, "b": 1}
    assert [f.code for f in report.warnings] == ["label-imbalance"]
    mixed = check_file(write(tmp_path / "m.jsonl", {"text": "a", "label": 1}, {"text": "b", "label": "x"}),
                       tokenizer=False)
    assert [f.code for f in mixed.errors] == ["label-types"]


def test_histogram_png_is_written(tmp_path):
    report = check_file(write(tmp_path / "d.jsonl", *GOOD), tokenizer=False, plot=tmp_path / "out" / "h.png")
    assert (tmp_path / "out" / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.plot.endswith("h.png")


def test_cli_exit_codes_and_json(tmp_path, capsys):
    ok = write(tmp_path / "ok.jsonl", *GOOD)
    assert main(["data", "check", str(ok), "--no-tokenizer"]) == 0
    assert "whitespace words" in capsys.readouterr().out
    bad = write(tmp_path / "bad.jsonl", GOOD[0], {"instruction": "x"})
    assert main(["data", "check", str(bad), "--no-tokenizer", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 1 and report["findings"][0]["where"] == f"{bad}:2"
    dup = write(tmp_path / "dup.jsonl", GOOD[0], GOOD[0])
    assert main(["data", "check", str(dup), "--no-tokenizer"]) == 0
    assert main(["data", "check", str(dup), "--no-tokenizer", "--strict"]) == 1
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "missing.jsonl"), "--no-tokenizer"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_locations_use_the_name_the_user_gave(tmp_path, capsys):
    path = write(tmp_path / "d.jsonl", GOOD[0], GOOD[0])
    report = check_file(path, tokenizer=False, source="bundled:mine")
    assert [f.where for f in report.findings] == ["bundled:mine:2"] and "line 1" in report.findings[0].message
    assert main(["data", "check", "bundled:quickstart_eval", "--no-tokenizer", "--json", "--exact-only"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "bundled:quickstart_eval"


def test_against_flags_rows_that_leak_from_another_file(tmp_path, capsys):
    train = write(tmp_path / "train.jsonl", *GOOD)
    evals = write(tmp_path / "eval.jsonl", {"instruction": "Name a colour.", "output": "red"}, GOOD[2])
    report = check_file(evals, tokenizer=False, against=[(train, "TRAIN")])
    assert [(f.code, f.where, f.message) for f in report.findings] == [
        ("in-other-file", f"{evals}:2", "duplicate of TRAIN:3")]
    assert main(["data", "check", str(evals), "--no-tokenizer", "--against", str(train), "--strict"]) == 1
    assert f"duplicate of {train}:3" in capsys.readouterr().out
