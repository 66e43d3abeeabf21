"""``mrdpm.models.fit``: Adam with cosine decay and clipping for the auxiliary networks."""

from __future__ import annotations

import pytest
import torch

from mrdpm.models.fit import FitResult, first_last_tenth, fit


def test_fit_solves_a_linear_regression():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x = torch.randn(64, 2)
    y = x @ torch.tensor([[2.0], [-1.0]]) + 0.5
    seen = []

    def loss_fn(step: int) -> torch.Tensor:
        seen.append(step)
        return (model(x) - y).square().mean()

    result = fit(model, loss_fn, steps=300, lr=0.05, desc="test")
    assert seen == list(range(1, 301))
    assert len(result.losses) == 300
    card = result.card()
    assert card["loss_last"] < 1e-3 * card["loss_first"]
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[2.0, -1.0]]), rtol=0, atol=0.02)


def test_summary_and_checks():
    assert first_last_tenth([float(v) for v in range(20)]) == (0.5, 18.5)
    assert first_last_tenth([3.0, 5.0]) == (3.0, 5.0)
    assert FitResult([1.0, 2.0], 1.26).card() == {"loss_first": 1.0, "loss_last": 2.0, "seconds": 1.3}
    with pytest.raises(ValueError, match="at least one"):
        first_last_tenth([])
    with pytest.raises(ValueError, match="steps >= 1"):
        fit(torch.nn.Linear(1, 1), lambda step: torch.zeros(()), steps=0, lr=1e-3, desc="test")
