"""`data augment`: seeded rule paraphrases vary the request only; the model path with a stub and (slow) SmolLM2."""
import json
import random

import pytest

from lorakit.data.augment import AugmentMethod, augment_file, judge_model_reply, rule_variants
from lorakit.data.formats import load_dataset
from lorakit.data.paraphrase_rules import reframe, swap_clauses, swap_phrases, synonyms

ROWS = [
    {"messages": [{"role": "system", "content": "Rewrite the note as activity|person|day|time."},
                  {"role": "user", "content": "Dinner with David on Sunday at 6pm."},
                  {"role": "assistant", "content": "dinner|David|Sun|6:00pm"}]},
    {"messages": [{"role": "user", "content": "Please write a short poem about the sea."},
                  {"role": "assistant", "content": "Waves."}]},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_each_rule():
    rng = random.Random(0)
    assert swap_phrases("Dinner with David on Sunday at 6pm.", rng, set()) == "Dinner with David at 6pm on Sunday."
    assert swap_clauses("If it rains, bring a coat.", rng, set()) == "Bring a coat if it rains."
    assert swap_clauses("Bring a coat if it rains.", rng, set()) == "If it rains, bring a coat."
    assert synonyms("Write a short poem.", rng, {"short"}).split()[2] == "short"  # the answer's words stay
    assert synonyms("Dinner at 6pm.", rng, set()) is None
    assert reframe("Please list three colours.", rng, set()).lower() != "please list three colours."


def test_rules_are_seeded_and_change_only_the_request(tmp_path):
    src = write(tmp_path / "in.jsonl", ROWS)
    result = augment_file(src, tmp_path / "a.jsonl", AugmentMethod.RULES, n_per_row=3, seed=5)
    augment_file(src, tmp_path / "b.jsonl", AugmentMethod.RULES, n_per_row=3, seed=5)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    out = load_dataset(tmp_path / "a.jsonl").rows
    assert len(out) == 2 + result.variants and result.variants >= 4
    originals = load_dataset(src).rows
    requests = {}
    for conv in out:
        source = next(o for o in originals if o[-1] == conv[-1])  # the answer is the original's
        assert conv[:-2] == source[:-2] and conv[-1] == source[-1]
        requests.setdefault(conv[-1]["content"], []).append(conv[-2]["content"].lower())
    assert all(len(set(r)) == len(r) for r in requests.values())  # variants differ from each other and the row
    assert all("david" in r and "6pm" in r for r in requests["dinner|David|Sun|6:00pm"])


def test_rule_variants_keep_answer_words():
    rng = random.Random(1)
    for v in rule_variants("Please write a short poem.", "A short poem.", 5, rng):
        assert "short" in v.lower()


def test_model_method_with_a_stub_generator(tmp_path):
    src = write(tmp_path / "in.jsonl", ROWS)
    replies = iter(["Request: Dinner on Sunday with David at 6pm.", "Dinner with someone.",
                    "Compose a brief poem about the sea.", ""])
    result = augment_file(src, tmp_path / "m.jsonl", AugmentMethod.MODEL, n_per_row=2,
                          generate=lambda prompts: [next(replies) for _ in prompts])
    assert result.variants == 2 and sum(result.rejected.values()) == 2
    assert result.rejected["lost a detail the answer needs"] == 1 and result.rejected["empty"] == 1
    users = [c[-2]["content"] for c in load_dataset(tmp_path / "m.jsonl").rows]
    assert "Dinner on Sunday with David at 6pm." in users and "Compose a brief poem about the sea." in users


def test_judge_refuses_repeats_and_runaways():
    seen = {"hello there"}
    assert judge_model_reply("Hello   there", "Hello there", "x", seen) == (None, "unchanged or repeated")
    assert judge_model_reply("word " * 200, "Hi", "x", set())[1] == "too long"


@pytest.mark.slow
def test_model_paraphrase_with_the_embedded_model(tmp_path):
    src = write(tmp_path / "in.jsonl", ROWS[1:])
    result = augment_file(src, tmp_path / "m.jsonl", AugmentMethod.MODEL, n_per_row=2, seed=0)
    assert result.variants + sum(result.rejected.values()) == 2
    rows = load_dataset(tmp_path / "m.jsonl").rows
    assert len(rows) == 1 + result.variants and all(r[-1]["content"] == "Waves." for r in rows)


def test_rules_refuse_a_model(tmp_path):
    from lorakit.errors import InputError

    src = write(tmp_path / "in.jsonl", ROWS)
    with pytest.raises(InputError, match="--model goes with --method model"):
        augment_file(src, tmp_path / "o.jsonl", AugmentMethod.RULES, model="x")
    assert not (tmp_path / "o.jsonl").exists()
