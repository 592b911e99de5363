"""The shipped datasets load, validate, are disjoint, short, and are exactly what generate.py writes."""
import json

import pytest

from lorakit.data import build_label_map, encode_dataset, load_dataset
from lorakit.data.bundled import NAMES, generate, path


@pytest.mark.parametrize("name", NAMES)
def test_bundled_files_load_and_validate(name):
    ds = load_dataset(path(name))
    assert ds.kind == ("classification" if name.startswith("classify") else "chat")
    assert path(name).stat().st_size < 300_000


def test_unknown_bundled_name_raises():
    with pytest.raises(KeyError, match="unknown bundled dataset"):
        path("nope")


def test_splits_are_disjoint():
    q_train, q_eval = (load_dataset(path(n)).rows for n in ("quickstart_train", "quickstart_eval"))
    assert (len(q_train), len(q_eval)) == (400, 60)
    assert not {m[1]["content"] for m in q_train} & {m[1]["content"] for m in q_eval}
    c_train, c_eval = (load_dataset(path(n)).rows for n in ("classify_train", "classify_eval"))
    assert (len(c_train), len(c_eval)) == (600, 150)
    assert not {r["text"] for r in c_train} & {r["text"] for r in c_eval}
    assert build_label_map(r["label"] for r in c_train) == {"account": 0, "billing": 1, "shipping": 2, "technical": 3}


def _answer_keys(name: str) -> set[str]:
    return {r[2]["content"] for r in load_dataset(path(name)).rows}


@pytest.mark.parametrize("task", ["contacts", "orders"])
def test_continual_tasks_hold_out_unseen_answers(task):
    train, held_out = _answer_keys(f"{task}_train"), _answer_keys(f"{task}_eval")
    assert len(load_dataset(path(f"{task}_eval")).rows) == 60
    assert not train & held_out


def test_contact_eval_names_never_appear_in_train():
    names = lambda n: {a.split(":")[0] for a in _answer_keys(n)}  # noqa: E731
    assert not names("contacts_train") & names("contacts_eval")


@pytest.mark.parametrize("task", ["quickstart", "contacts", "orders"])
def test_chat_examples_are_short(smol_tokenizer, task):
    examples, stats = encode_dataset(smol_tokenizer, load_dataset(path(f"{task}_eval")), max_length=128)
    assert stats.truncated == 0 and max(len(e) for e in examples) <= 96  # well inside max_length 128


def test_generator_reproduces_the_shipped_files():
    q_train, q_eval = generate.quickstart_rows()
    c_train, c_eval = generate.classify_rows()
    p_train, p_eval = generate.contacts_rows()
    o_train, o_eval = generate.orders_rows()
    for name, rows in zip(NAMES, (q_train, q_eval, c_train, c_eval, p_train, p_eval, o_train, o_eval), strict=True):
        shipped = [json.loads(line) for line in path(name).read_text().splitlines()]
        assert shipped == rows
