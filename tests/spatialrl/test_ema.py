"""ParameterEMA: the update against the hand formula, swapping for evaluation, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatialrl.ema import ParameterEMA


def test_update_swap_and_state():
    params = [nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([[4.0]]))]
    ema = ParameterEMA(params, decay=0.9)
    with torch.no_grad():
        params[0].copy_(torch.tensor([3.0, 2.0]))
        params[1].fill_(0.0)
    ema.update(params)
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.2, 2.0]))  # 0.9 * 1 + 0.1 * 3
    torch.testing.assert_close(ema.shadow[1], torch.tensor([[3.6]]))
    with ema.swapped(params):
        torch.testing.assert_close(params[0].detach(), torch.tensor([1.2, 2.0]))
    torch.testing.assert_close(params[0].detach(), torch.tensor([3.0, 2.0]))
    other = ParameterEMA(params, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow, strict=True))


def test_mismatch_and_bad_decay():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="decay"):
        ParameterEMA(params, decay=1.0)
    ema = ParameterEMA(params, decay=0.5)
    with pytest.raises(ValueError, match="tracks 1"):
        ema.update(params * 2)
    with pytest.raises(ValueError, match="does not match"):
        ema.load_state_dict({"updates": 0, "shadow": [torch.zeros(3)]})
