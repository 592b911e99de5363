"""MinHash/LSH near-duplicates: confirmed by exact Jaccard, seeded, greedy in file order; `dedupe` removes what `check` reports."""
import json
import random

from lorakit.data.dedupe import (DupKind, MinHasher, bands_for, dedupe_file, find_duplicates, jaccard,
                                 normalize_text, shingles)


def brute_force(texts, threshold):
    """The reference: every row against every earlier kept row, exact Jaccard."""
    kept, out = [], []
    for i, t in enumerate(texts):
        grams = shingles(normalize_text(t))
        match = next((j for j, g in kept if jaccard(grams, g) >= threshold), None)
        if match is None:
            kept.append((i, grams))
        else:
            out.append((i, match))
    return out


def corpus(n=120, seed=0):
    rng = random.Random(seed)
    words = "alpha beta gamma delta lunch dinner friday monday noon call meet ana leo tara park cafe".split()
    base = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n // 2)]
    edits = []
    for b in base:
        w = b.split()
        w[rng.randrange(len(w))] = rng.choice(words)  # one word changed: often a near-duplicate
        edits.append(" ".join(w))
    return base + edits


def test_lsh_finds_what_brute_force_finds():
    texts = corpus()
    found = find_duplicates(texts, near=0.7)
    assert all(d.similarity >= 0.7 for d in found)  # confirmed exactly: no false positive
    truth = brute_force(texts, 0.7)
    ours = {(d.index, d.of) for d in found}
    assert len(truth) > 10
    assert len(ours & set(truth)) >= 0.97 * len(truth)  # LSH misses at most a few borderline pairs


def test_exact_duplicates_are_normalised_and_seeded_signatures_repeat():
    found = find_duplicates(["Hello  World", "hello world", "HELLO WORLD\n", "other"])
    assert [(d.index, d.of, d.kind) for d in found] == [(1, 0, DupKind.EXACT), (2, 0, DupKind.EXACT)]
    grams = shingles("some text to hash")
    assert (MinHasher(seed=3).signature(grams) == MinHasher(seed=3).signature(grams)).all()


def test_bands_leave_room_below_the_threshold():
    for t in (0.5, 0.7, 0.85, 0.95):
        b, r = bands_for(t)
        assert b * r == 128 and (1 / b) ** (1 / r) <= t - 0.1


def test_dedupe_file_keeps_first_rows_verbatim(tmp_path):
    rows = [{"text": "Hello there friend", "label": "a", "extra": 1}, {"text": "hello there friend", "label": "a"},
            {"text": "Something else", "label": "b"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = dedupe_file(src, tmp_path / "out.jsonl")
    assert (result.rows, result.kept, result.exact, result.near) == (3, 2, 1, 0)
    assert [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()] == [rows[0], rows[2]]
