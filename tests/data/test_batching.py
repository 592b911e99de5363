"""Length-grouped and packed batches: budgets, exact packed logits, determinism and resume."""
import random

import pytest
import torch

from lorakit.data import IGNORE, Example, collate_packed, grouped_batches, packed_batches


def make_examples(n=60, lo=3, hi=40, seed=0, vocab=128):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))]
        cut = rng.randint(1, len(ids) - 1)
        out.append(Example(ids, [IGNORE] * cut + ids[cut:]))
    return out


def as_lists(loader):
    return [{k: v.tolist() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]


def test_grouped_batches_respect_token_budget_and_cover_every_example():
    ex = make_examples()
    loader = grouped_batches(ex, max_tokens=120, pad_id=0, seed=3)
    seen = []
    for batch in loader:
        B, L = batch["input_ids"].shape
        assert B * L <= 120
        assert batch["attention_mask"].shape == (B, L)
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
        seen += [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]
    assert sorted(seen) == sorted(tuple(e.input_ids) for e in ex)


def test_grouping_pads_less_than_random_batches():
    ex = make_examples(200)
    loader = grouped_batches(ex, max_tokens=160, pad_id=0, seed=0)
    padded = sum(b["input_ids"].numel() for b in loader)
    assert padded < 1.15 * sum(len(e) for e in ex)


def test_packed_rows_respect_max_length_and_budget():
    ex = make_examples()
    loader = packed_batches(ex, max_length=64, max_tokens=256, pad_id=0, seed=1)
    total = 0
    for batch in loader:
        R, L = batch["input_ids"].shape
        assert R <= 4 and L <= 64
        assert batch["attention_mask"].shape == (R, 1, L, L)
        total += int((batch["labels"] != IGNORE).sum())
    assert total == sum(sum(lab != IGNORE for lab in e.labels[1:]) for e in ex)


@pytest.mark.parametrize("kind", ["grouped", "packed"])
def test_batches_are_deterministic_given_seed_and_change_per_epoch(kind):
    ex = make_examples()
    make = {"grouped": lambda s: grouped_batches(ex, 120, 0, seed=s),
            "packed": lambda s: packed_batches(ex, 64, 128, 0, seed=s)}[kind]
    a, b = make(7), make(7)
    first = as_lists(a)
    assert first == as_lists(b)
    assert as_lists(a) != first  # epoch 1 is reshuffled
    assert as_lists(make(8)) != first


@pytest.mark.parametrize("kind", ["grouped", "packed"])
def test_resume_from_state_dict_yields_the_same_remaining_batches(kind):
    ex = make_examples()
    make = {"grouped": lambda: grouped_batches(ex, 120, 0, seed=5),
            "packed": lambda: packed_batches(ex, 64, 128, 0, seed=5)}[kind]
    ref = make()
    reference = as_lists(ref) + as_lists(ref)  # two epochs
    run = make()
    it = iter(run)
    consumed = [next(it) for _ in range(3)]
    state = run.state_dict()
    assert state["index"] == 3 and state["epoch"] == 0
    resumed = make()
    resumed.load_state_dict(state)
    rest = as_lists(resumed) + as_lists(resumed)
    assert as_lists(consumed) + rest == reference
    with pytest.raises(ValueError):
        grouped_batches(ex[:-1], 120, 0, seed=5).load_state_dict(state)


def tiny_llama(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("mask", ["4d", "position_ids"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_sample_run_alone(attn, mask):
    model = tiny_llama(attn)
    ex = make_examples(7, lo=3, hi=20, seed=2)
    rows = [[0, 1, 2], [3, 4], [5, 6]]
    batch = collate_packed(ex, rows, pad_id=0, mask=mask)
    with torch.no_grad():
        packed = model(**batch).logits
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(ex[i])
                alone = model(torch.tensor([ex[i].input_ids])).logits[0]
                torch.testing.assert_close(packed[r, at:at + n], alone, atol=1e-5, rtol=0)
                at += n


def test_packed_loss_equals_unpacked_loss():
    model = tiny_llama("sdpa")
    ex = make_examples(4, seed=4)
    batch = collate_packed(ex, [[0, 1, 2, 3]], pad_id=0)
    with torch.no_grad():
        logits = model(**batch).logits[0, :-1]
        packed = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], ignore_index=IGNORE,
                                                   reduction="sum")
        alone = sum(model(torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss
                    * sum(lab != IGNORE for lab in e.labels[1:]) for e in ex)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
