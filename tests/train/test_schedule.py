"""Learning-rate schedules: linear warmup to the peak, then constant, linear or cosine decay."""
import math

import pytest
import torch

from lorakit.train.schedule import build_scheduler, lr_factor

# total 10 steps, warmup 2: steps 0, 1 warm up (1/3, 2/3); decay runs over steps 2..9 (progress (s - 2) / 8).
EXPECTED = {
    "constant": {0: 1 / 3, 1: 2 / 3, 2: 1.0, 6: 1.0, 9: 1.0},
    "linear": {0: 1 / 3, 1: 2 / 3, 2: 1.0, 6: 0.5, 9: 1 / 8},
    "cosine": {0: 1 / 3, 1: 2 / 3, 2: 1.0, 6: 0.5, 9: 0.5 * (1 + math.cos(math.pi * 7 / 8))},
}


@pytest.mark.parametrize("schedule", sorted(EXPECTED))
def test_factor_at_chosen_steps(schedule):
    for step, factor in EXPECTED[schedule].items():
        assert lr_factor(step, 10, 2, schedule) == pytest.approx(factor), step


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_is_monotone_and_never_negative(schedule):
    factors = [lr_factor(s, 50, 5, schedule) for s in range(60)]
    assert factors[:6] == sorted(factors[:6]) and factors[5] == 1.0
    assert factors[5:] == sorted(factors[5:], reverse=True) and min(factors) >= 0.0
    assert lr_factor(50, 50, 5, schedule) == pytest.approx(0.0, abs=1e-12)


def test_no_warmup_starts_at_the_peak():
    assert [lr_factor(0, 10, 0, s) for s in ("constant", "linear", "cosine")] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("schedule", sorted(EXPECTED))
def test_scheduler_drives_every_param_group(schedule):
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 1.6}])
    scheduler = build_scheduler(optimizer, total=10, warmup=2, schedule=schedule)
    for step in range(10):
        f = lr_factor(step, 10, 2, schedule)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * f, 1.6 * f])
        optimizer.step()
        scheduler.step()
