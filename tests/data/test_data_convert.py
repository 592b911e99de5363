"""`data convert` round-trips conversations; `data split` is seeded, complete and per label."""
import json

import pytest

from lorakit.data.convert import ChatFormat, convert_file, split_file, split_indices
from lorakit.data.formats import load_dataset
from lorakit.data.io import DataError

ROWS = [
    {"system": "Be brief.", "history": [["hi", "hello"]], "instruction": "2+2?", "output": "4"},
    {"instruction": "Add", "input": "1 and 2", "output": "3"},
    {"instruction": "Name a colour.", "output": "blue"},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("first", list(ChatFormat))
@pytest.mark.parametrize("second", list(ChatFormat))
def test_converted_rows_train_the_same(tmp_path, first, second):
    src = write(tmp_path / "in.jsonl", ROWS)
    convert_file(src, tmp_path / "a.jsonl", first)
    convert_file(tmp_path / "a.jsonl", tmp_path / "b.json", second)
    original, converted = load_dataset(src), load_dataset(tmp_path / "b.json")
    assert converted.format == second.value and converted.rows == original.rows


def test_convert_refuses_what_a_format_cannot_hold(tmp_path):
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "content": "c"}]}
    src = write(tmp_path / "in.jsonl", [chat])
    with pytest.raises(DataError, match=r"in.jsonl:1: alpaca needs alternating"):
        convert_file(src, tmp_path / "out.jsonl", ChatFormat.ALPACA)
    assert not (tmp_path / "out.jsonl").exists()
    labels = write(tmp_path / "c.jsonl", [{"text": "x", "label": "a"}])
    with pytest.raises(DataError, match="not conversations"):
        convert_file(labels, tmp_path / "out.jsonl", ChatFormat.MESSAGES)
    with pytest.raises(DataError, match="exists"):
        convert_file(src, src.with_name("c.jsonl"), ChatFormat.MESSAGES)


def test_split_is_deterministic_and_complete(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)]
    src = write(tmp_path / "all.jsonl", rows)
    result = split_file(src, 0.2, seed=7)
    assert (result.train, result.eval) == (40, 10) and result.train_path == tmp_path / "all_train.jsonl"
    train = [json.loads(l) for l in result.train_path.read_text().splitlines()]
    evals = [json.loads(l) for l in result.eval_path.read_text().splitlines()]
    assert sorted(train + evals, key=lambda r: int(r["instruction"][1:])) == rows
    again = split_file(src, 0.2, seed=7, out_dir=tmp_path / "again")
    assert again.eval_path.read_text() == result.eval_path.read_text()
    assert split_indices(50, 0.2, 8) != split_indices(50, 0.2, 7)


def test_split_per_label_keeps_every_label_in_train(tmp_path):
    rows = [{"text": f"t{i}", "label": "big"} for i in range(40)] + [{"text": "u", "label": "rare"}]
    result = split_file(write(tmp_path / "c.jsonl", rows), 0.25, train_out=tmp_path / "tr.jsonl",
                        eval_out=tmp_path / "ev.jsonl")
    assert result.stratified and result.eval == 10
    assert "rare" in (tmp_path / "tr.jsonl").read_text() and "rare" not in (tmp_path / "ev.jsonl").read_text()


def test_split_of_a_bundled_dataset_writes_to_the_current_directory(tmp_path, monkeypatch):
    from lorakit.data import bundled

    monkeypatch.chdir(tmp_path)
    result = split_file(bundled.path("quickstart_eval"), 0.5, seed=0)
    assert result.train_path.resolve() == tmp_path / "quickstart_eval_train.jsonl" and result.eval_path.is_file()
