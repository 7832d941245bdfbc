"""Logits -> probabilities, shared by target and draft so both see the same warping.

Speculative sampling is lossless only if the draft distribution q and the target
distribution p are warped by the *same* temperature, top-k and top-p; keeping the
warping in one function is how that is guaranteed.
"""

from __future__ import annotations

import torch

from adaspec.config import SamplingParams


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Warped probabilities for each row.

    logits: [n, vocab] (any float dtype) -> [n, vocab] float32 rows summing to 1.
    Greedy params give one-hot rows at the argmax.
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # [n, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    return probs


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [n, vocab]
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly better tokens
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token id drawn from a single probability row [vocab].

    Drawn on the CPU so one CPU generator serves every device and a seed means the same
    thing on CPU and GPU; the row is needed on the host for the token id anyway.
    """
    return int(torch.multinomial(probs.float().cpu(), 1, generator=generator))
