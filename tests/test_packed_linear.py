"""oneDNN-packed linears: same function as nn.Linear, batch rows as one-token rows, and
speculative greedy output still equal to autoregressive on a packed model."""

from __future__ import annotations

import pytest
import torch

from adaspec.backends.packed_linear import (
    DENSE,
    PACKED,
    PREFILL_ROWS,
    XEON,
    PackedLinear,
    pack_linears,
    packing_available,
)
from adaspec.config import GenerationConfig
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.ngram import NgramDrafter
from adaspec.engine import Engine
from adaspec.policies.fixed import FixedPolicy
from tests.tiny import ar_tokens, backend, tiny_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")


def packed_fp32(seed: int = 0) -> torch.nn.Module:
    model = tiny_model(seed=seed).float()
    assert len(pack_linears(model)) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; lm_head
    return model


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("layout", [XEON, PACKED, DENSE], ids=["xeon", "packed", "dense"])
def test_packed_linear_computes_what_linear_computes(rows, layout):
    torch.manual_seed(0)
    for bias in (True, False):
        linear = torch.nn.Linear(24, 40, bias=bias)
        x = torch.randn(1, rows, 24)
        with torch.inference_mode():
            assert torch.allclose(PackedLinear(linear, layout)(x), linear(x), atol=1e-5)


def test_a_layout_serves_its_row_counts_from_the_dense_weight():
    layer = PackedLinear(torch.nn.Linear(8, 4, bias=False), XEON)
    with torch.inference_mode():
        layer.dense.zero_()  # only the dense path can now return zeros
        for rows in [1, 2, 3, 4, 5, PREFILL_ROWS - 1, PREFILL_ROWS]:
            zeros = not layer(torch.randn(rows, 8)).any()
            assert zeros == (rows in (1, 2, 3) or rows >= PREFILL_ROWS), rows
        layer.use(PACKED, free=False)  # both copies kept: served packed, dense still there
        assert layer(torch.randn(1, 8)).any() and layer.dense is not None


def test_a_layout_keeps_only_the_copies_it_uses():
    packed_only = PackedLinear(torch.nn.Linear(8, 4), PACKED)
    dense_only = PackedLinear(torch.nn.Linear(8, 4), DENSE)
    assert packed_only.dense is None and packed_only.packed is not None
    assert dense_only.packed is None and dense_only.dense is not None
    both = PackedLinear(torch.nn.Linear(8, 4), XEON)
    both.use(PACKED)  # what the timing chose on a CPU where packed always wins
    assert both.dense is None
    with pytest.raises(ValueError, match="no longer holds"):
        both.use(DENSE)


def test_only_fp32_cpu_layers_are_packed():
    assert pack_linears(tiny_model(seed=0)) == []  # float64: left as it is
    model = packed_fp32()
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_packed_model_scores_like_the_original():
    plain = tiny_model(seed=0).float()
    packed = packed_fp32(seed=0)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    with torch.inference_mode():
        want = plain(torch.tensor([tokens])).logits[0]
    got = backend(packed).forward(tokens)
    assert torch.allclose(got, want, atol=1e-4)
    one_by_one = backend(packed)
    rows = torch.cat([one_by_one.forward([t]) for t in tokens])
    assert torch.allclose(rows, got, atol=1e-4)  # batched rows = one-token rows


DRAFTERS = {
    "ngram": lambda: NgramDrafter(),
    "model-self": lambda: ModelDrafter(backend(packed_fp32()), 96),  # accepts everything
}


@pytest.mark.parametrize("drafter", list(DRAFTERS))
@pytest.mark.parametrize("layout", [XEON, PACKED], ids=["xeon", "packed"])
def test_greedy_on_a_packed_model_equals_autoregressive(drafter, layout):
    model = tiny_model(seed=0).float()
    pack_linears(model, layout)
    target = backend(model)
    prompt = [11, 2, 30, 4, 50, 6, 70, 8, 90, 1, 2, 3]
    want = ar_tokens(target, prompt, 40)
    engine = Engine(target, DRAFTERS[drafter](), FixedPolicy(6))
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=40))
    assert result.token_ids == want
    assert drafter != "model-self" or result.stats.summary()["acceptance_rate"] == 1.0
