"""The merge kernels' exact selection and block-wise combination (their results are checked against
peft and mergekit in test_combine.py / test_models.py; these cover tensors larger than one block)."""
import pytest
import torch

from lorakit.merge import methods


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(methods, "CHUNK", 64)


def test_kth_largest_is_exact_across_blocks(small_blocks):
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 1000):
        x = torch.randn(n, generator=g).abs()
        x[: n // 4] = 0  # many exact zeros
        x[n // 2: n // 2 + 3] = 0.5  # ties
        for k in sorted({1, max(1, n // 3), n}):
            assert methods.kth_largest(x, k) == x.kthvalue(n - k + 1).values
            mask = methods.top_k_mask(x.view(-1, 1) if n > 1 else x, k).reshape(-1)
            threshold = x.kthvalue(n - k + 1).values
            assert bool((x[mask] >= threshold).all())
            assert int(mask.sum()) == k or threshold == 0  # zeros are never needed to fill k


def test_block_wise_combination_equals_whole_tensor(small_blocks, monkeypatch):
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(3, 40, 17, generator=g)
    weights = torch.tensor([0.5, -1.0, 2.0])
    for options in ({}, {"consensus": "total", "divide": methods.by_weights},
                    {"consensus": "frequency", "elect_weighted": False, "divide": methods.by_count}):
        blocks = methods.combine_deltas(deltas.clone(), weights, **options)
        monkeypatch.setattr(methods, "CHUNK", 10 ** 9)
        whole = methods.combine_deltas(deltas.clone(), weights, **options)
        monkeypatch.setattr(methods, "CHUNK", 64)
        torch.testing.assert_close(blocks, whole)


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    torch.testing.assert_close(methods.slerp(0.0, a, b), a)
    torch.testing.assert_close(methods.slerp(1.0, a, b), b)
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(methods.slerp(0.5, u, v).norm(), torch.tensor(1.0))  # on the arc, not the chord
