from __future__ import annotations

import itertools

import pytest
import torch

from overread.training.schedules import build_scheduler, one_cycle, warmup_cosine


def test_warmup_rises_linearly_then_cosine_decays_to_floor() -> None:
    f = warmup_cosine(total_steps=100, warmup_steps=10, floor=0.01)
    warm = [f(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(0.1) and warm[-1] == pytest.approx(1)
    decay = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-6)  # half-way: cosine midpoint
    assert f(100) == pytest.approx(0.01)


def test_one_cycle_peaks_at_end_of_warmup() -> None:
    f = one_cycle(total_steps=50, warmup_steps=10)
    values = [f(s) for s in range(51)]
    assert max(values) == pytest.approx(1.0)
    assert values.index(max(values)) == 10
    assert values[0] < 0.1 and values[-1] < 0.01


def test_scheduler_applies_to_every_group_and_resumes() -> None:
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}])
    sched = build_scheduler(opt, "cosine", total_steps=20, warmup_steps=4)
    for _ in range(7):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[1] == pytest.approx(lrs[0] * 0.1)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}])
    sched2 = build_scheduler(opt2, "cosine", total_steps=20, warmup_steps=4)
    sched2.load_state_dict(state)
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(
        [g["lr"] for g in opt.param_groups]
    )


def test_unknown_schedule_is_refused() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(opt, "step", 10, 1)
