"""Multi-task mixing and replay: shares by weight over many batches, replay in every batch, task prefixes."""
import json
from collections import Counter

import pytest
import torch

from lorakit.data.mixing import mix_indices, mixed_batches, mixed_plan, source_counts
from lorakit.train.prepare import load_data, prepare


def flat(batch):
    return [i for x in batch for i in (x if isinstance(x, list) else [x])]


def test_source_counts_follow_weights_and_add_up():
    assert source_counts([10, 10, 10], [1, 1, 2]) == [8, 7, 15]
    counts = source_counts([40, 10, 50], [3, 1, 1])
    assert sum(counts) == 100 and counts == [60, 20, 20]


def test_mixing_proportions_over_many_batches_match_weights():
    sizes, weights = [30, 50, 20], [0.5, 0.2, 0.3]
    lengths = [5 + (i * 7) % 11 for i in range(sum(sizes))]
    seen = Counter()
    for epoch in range(20):
        g = torch.Generator().manual_seed(epoch)
        for batch in mixed_plan(lengths, sizes, weights, 0, 0.0, "grouped", 64, 64, g):
            for i in flat(batch):
                seen[0 if i < 30 else 1 if i < 80 else 2] += 1
    total = sum(seen.values())
    assert total == 20 * 100
    for s, w in enumerate(weights):
        assert seen[s] / total == pytest.approx(w, abs=0.01)


def test_mixing_is_deterministic_with_the_seed_and_cycles_a_short_source():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = mix_indices([4, 20], [3, 1], g1), mix_indices([4, 20], [3, 1], g2)
    assert a == b
    small = Counter(i for i in a if i < 4)
    assert sum(small.values()) == 18 and set(small) == {0, 1, 2, 3}  # cycled: 18 draws from 4 rows
    assert max(small.values()) - min(small.values()) <= 1


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_replay_share_in_every_batch(batching):
    main, replay, ratio = 60, 25, 0.25
    lengths = [8] * (main + replay)  # equal lengths: the token share is the row share
    for epoch in range(3):
        g = torch.Generator().manual_seed(epoch)
        plan = mixed_plan(lengths, [main], [1.0], replay, ratio, batching, 128, 16, g)
        assert sorted(i for b in plan for i in flat(b) if i < main) == list(range(main))  # the epoch is whole
        for batch in plan:
            rows = flat(batch)
            replayed = sum(i >= main for i in rows)
            assert replayed >= 1
            if batching == "grouped" and len(rows) == 16:  # full batch: 12 main rows under 96 tokens + 4 replay
                assert replayed / len(rows) == pytest.approx(ratio)


def test_replay_tokens_share_with_mixed_lengths():
    torch.manual_seed(0)
    lengths = torch.randint(4, 30, (200,)).tolist()
    plan = mixed_plan(lengths, [150], [1.0], 50, 0.3, "grouped", 256, 64, torch.Generator().manual_seed(0))
    budget = [(sum(lengths[i] for i in b if i < 150), sum(lengths[i] for i in b if i >= 150)) for b in plan]
    main_tokens, replay_tokens = map(sum, zip(*budget))
    assert replay_tokens / (main_tokens + replay_tokens) == pytest.approx(0.3, abs=0.05)
    assert all(r > 0 for _, r in budget)


def test_mixed_loader_resumes_exactly():
    class E(list):
        @property
        def input_ids(self):
            return list(self)

        @property
        def labels(self):
            return list(self)

    ex = [E([1] * n) for n in range(3, 23)]
    loader = mixed_batches([ex[:12], ex[12:16]], [1, 1], ex[16:], 0.2, "grouped", 64, 32, 0, seed=5)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [b["input_ids"].tolist() for b in it]
    loader.load_state_dict(state)
    assert [b["input_ids"].tolist() for b in loader] == rest


def _rows(path):
    return [json.loads(l) for l in open(path)]


def test_task_prefix_goes_in_front_of_the_user_prompt(sft_config, sft_files, tmp_path):
    config = sft_config(f"data.train=[{{file: {sft_files[0]}, prefix: 'calendar: '}}, "
                        f"{{file: {sft_files[1]}, weight: 2}}]")
    data = load_data(config)
    assert len(data.parts) == 2 and len(data.train) == 10
    first = _rows(sft_files[0])[0]["messages"]
    user = next(m for m in first if m["role"] == "user")["content"]
    got = next(m for m in data.parts[0].rows[0] if m["role"] == "user")["content"]
    assert got == "calendar: " + user
    other = next(m for m in data.parts[1].rows[0] if m["role"] == "user")["content"]
    assert not other.startswith("calendar: ")


def test_a_mixed_run_with_replay_trains(sft_config, sft_files):
    config = sft_config(f"data.train=[{{file: {sft_files[0]}}}, {{file: {sft_files[1]}, prefix: 'B: '}}]",
                        f"data.replay={{file: {sft_files[1]}, ratio: 0.3}}", "train.steps=2")
    run = prepare(config)
    assert run.stats["replay"].kept == 2 and run.stats["train"].rows == 10
    from lorakit.train.loop import train

    result = train(config, run=run, quiet=True)
    assert len(result.losses) == 2 and all(l == l for l in result.losses)
    assert (config.out / "adapter" / "adapter_model.safetensors").is_file()
