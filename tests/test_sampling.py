from __future__ import annotations

import pytest
import torch

from adaspec.config import GenerationConfig, SamplingParams
from adaspec.errors import ConfigError
from adaspec.sampling import probabilities, sample

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])


def test_greedy_is_one_hot_at_argmax():
    assert probabilities(LOGITS, SamplingParams()).tolist() == [[0, 0, 0, 0, 1]]


def test_temperature_one_is_softmax():
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0))
    assert torch.allclose(probs, torch.softmax(LOGITS, -1))


def test_top_k_keeps_k_best():
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_k=2))[0]
    assert (probs > 0).tolist() == [True, False, False, False, True]
    assert probs.sum().item() == pytest.approx(1.0)


def test_top_p_keeps_smallest_set_reaching_p():
    soft = torch.softmax(LOGITS, -1)[0]  # [0.23, 0.08, 0.05, 0.01, 0.63]
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.8))[0]
    assert (probs > 0).tolist() == [True, False, False, False, True]
    assert probs[4].item() == pytest.approx(float(soft[4] / (soft[0] + soft[4])), rel=1e-5)


def test_sample_respects_zero_probability():
    g = torch.Generator().manual_seed(0)
    row = torch.tensor([0.0, 1.0, 0.0])
    assert {sample(row, g) for _ in range(20)} == {1}


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}],
)
def test_invalid_sampling_values(kwargs):
    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


def test_invalid_max_new_tokens():
    with pytest.raises(ConfigError):
        GenerationConfig(max_new_tokens=0)
