"""The training state of a checkpoint as safetensors and JSON reads back exactly (duda_hf/training/state_files.py)."""

import math
import random

import numpy as np
import pytest
import torch

from duda_hf.training import state_files


def _adamw_with_schedule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = [
        {"params": [model[0].weight], "lr": 1e-2, "weight_decay": 0.01},
        {"params": [model[0].bias, *model[1].parameters()], "lr": 1e-1, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    return model, optimizer, schedule


def _steps(model, optimizer, schedule, count):
    for _ in range(count):
        loss = model(torch.randn(8, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()


def test_optimizer_and_schedule_round_trip_and_continue_bit_for_bit(tmp_path):
    model, optimizer, schedule = _adamw_with_schedule()
    _steps(model, optimizer, schedule, 3)
    state_files.save_optimizer(optimizer, tmp_path)
    state_files.save_json_state(schedule, tmp_path / state_files.SCHEDULER_JSON)
    assert state_files.has_training_state(tmp_path)
    copy, optimizer2, schedule2 = _adamw_with_schedule()
    copy.load_state_dict(model.state_dict())
    state_files.load_optimizer(optimizer2, tmp_path)
    state_files.load_json_state(schedule2, tmp_path / state_files.SCHEDULER_JSON)
    assert optimizer2.param_groups[0]["betas"] == (0.9, 0.999) and schedule2.state_dict() == schedule.state_dict()
    torch.manual_seed(1)
    _steps(model, optimizer, schedule, 3)
    torch.manual_seed(1)
    _steps(copy, optimizer2, schedule2, 3)
    for a, b in zip(model.parameters(), copy.parameters()):
        assert torch.equal(a, b)


def test_a_state_with_infinity_reads_back_unchanged(tmp_path):
    """A plateau schedule starts from an infinite best value; the strict writer of reports would make it null."""
    _, optimizer, _ = _adamw_with_schedule()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    assert math.isinf(plateau.state_dict()["best"])
    state_files.save_json_state(plateau, tmp_path / "plateau.json")
    again = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    again.best = 0.0
    state_files.load_json_state(again, tmp_path / "plateau.json")
    assert again.state_dict() == plateau.state_dict() and math.isinf(again.best)


def test_an_optimizer_of_other_networks_is_refused(tmp_path):
    _, optimizer, _ = _adamw_with_schedule()
    state_files.save_optimizer(optimizer, tmp_path)
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="has 2 parameter groups, this run's has 1"):
        state_files.load_optimizer(other, tmp_path)


def test_the_random_state_of_each_process_reads_back(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1)  # a cached Gaussian in Python's state
    state_files.save_random_state(tmp_path, 1, 2)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert state_files.load_random_state(tmp_path, 1, 2) and not state_files.load_random_state(tmp_path, 0, 2)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rng_state_1.json", "rng_state_1.safetensors"]
