"""Loading every format from every file type, detection, and one-line validation errors."""
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lorakit.data import DataError, detect_format, load_dataset

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
ROWS = {
    "alpaca": [{"system": "Be brief.", "history": [["hi", "hello"]], "instruction": "2+2?", "output": "4"},
               {"instruction": "Add", "input": "1 and 2", "output": "3"}],
    "sharegpt": [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                                    {"from": "gpt", "value": "hello"}, {"from": "user", "value": "2+2?"},
                                    {"from": "assistant", "value": "4"}]},
                 {"conversations": [{"from": "human", "value": "Add\n\n1 and 2"}, {"from": "gpt", "value": "3"}]}],
    "messages": [{"messages": CHAT},
                 {"messages": [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]}],
    "text": [{"text": "once upon a time"}, {"text": "the end"}],
    "classification": [{"text": "my card was charged twice", "label": "billing"},
                       {"text": "app crashes", "label": "technical"}],
}
EXPECTED = {
    "chat": [CHAT, [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]],
    "text": ROWS["text"],
    "classification": ROWS["classification"],
}


def write(path, rows):
    """Write rows as .json/.jsonl/.csv/.parquet (CSV: nested lists as JSON cells)."""
    ext = path.suffix
    if ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif ext == ".csv":
        keys = sorted({k for r in rows for k in r})
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    elif ext == ".parquet":
        keys = sorted({k for r in rows for k in r})
        pq.write_table(pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys}), path)
    return path


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_format_and_file_type_loads_to_the_same_shape(tmp_path, fmt, ext):
    path = write(tmp_path / f"d{ext}", ROWS[fmt])
    for given in (None, fmt):
        ds = load_dataset(path, format=given)
        assert ds.format == fmt
        assert ds.rows == EXPECTED[ds.kind]


def test_detection_from_keys():
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "", "output": ""}) == "alpaca"
    assert detect_format({"text": "", "label": 1}) == "classification"
    assert detect_format({"text": ""}) == "text"
    assert detect_format({"prompt": ""}) is None


def test_explicit_format_that_does_not_match_raises(tmp_path):
    path = write(tmp_path / "d.jsonl", ROWS["messages"])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing key 'instruction' \(alpaca format\)"):
        load_dataset(path, format="alpaca")


def bad(tmp_path, rows, ext=".jsonl", **kw):
    with pytest.raises(DataError) as e:
        load_dataset(write(tmp_path / f"train{ext}", rows), **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / f"train{ext}"))
    return msg


def test_missing_key_names_file_and_line(tmp_path):
    rows = [{"instruction": "a", "output": "b"}] * 16 + [{"instruction": "a"}]
    assert bad(tmp_path, rows).endswith("train.jsonl:17: missing key 'output' (alpaca format)")


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c" "d"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:3: invalid JSON: Expecting ',' delimiter"):
        load_dataset(p)
    p = tmp_path / "train.json"
    p.write_text('[\n{"text": "a"},\n{"text" "b"}\n]')
    with pytest.raises(DataError, match=r"train\.json:3: invalid JSON"):
        load_dataset(p)


@pytest.mark.parametrize("ext,where", [(".jsonl", ":2:"), (".json", "[1]:"), (".csv", ":3:"), (".parquet", "[row 1]:")])
def test_errors_name_the_row_in_every_file_type(tmp_path, ext, where):
    rows = [{"text": "ok", "label": "a"}, {"text": "no label"}]
    msg = bad(tmp_path, rows, ext=ext, format="classification")
    assert f"train{ext}{where} missing key 'label'" in msg


@pytest.mark.parametrize("messages,problem", [
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], "role 'bot' is not one of system/user/assistant"),
    ([], "empty conversation"),
    ([{"role": "user", "content": "hi"}], "conversation has no assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}], "content must be a string, got int"),
    ([{"role": "assistant", "content": "hi"}], "must start with a user turn"),
])
def test_conversation_problems(tmp_path, messages, problem):
    rows = [{"messages": CHAT}, {"messages": CHAT}, {"messages": messages}]
    msg = bad(tmp_path, rows)
    assert "train.jsonl:3: " in msg and problem in msg


def test_sharegpt_unknown_role(tmp_path):
    msg = bad(tmp_path, [{"conversations": [{"from": "bot", "value": "x"}]}])
    assert "train.jsonl:1: message 0: role 'bot' is not one of" in msg


def test_empty_file_and_unknown_extension(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"e\.jsonl: empty file"):
        load_dataset(tmp_path / "e.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"d\.txt: unknown extension '\.txt'"):
        load_dataset(tmp_path / "d.txt")


def test_undetectable_format_names_keys(tmp_path):
    msg = bad(tmp_path, [{"prompt": "a", "completion": "b"}])
    assert "train.jsonl:1: cannot detect the format from keys ['completion', 'prompt']" in msg
