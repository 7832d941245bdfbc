"""Lossless acceptance of a draft: the one place that decides which tokens are kept.

Terms (as in vLLM's rejection sampler), for a draft x_1..x_k checked by one target pass:
  accepted  - draft tokens kept, always a prefix x_1..x_n of the draft;
  recovered - the token the target puts at position n+1 when x_{n+1} is rejected;
  bonus     - the extra target token after a fully accepted draft (n = k).
Every step therefore yields n + 1 tokens, so decoding never goes slower in tokens per pass
than autoregressive decoding, which is the k = 0 case of the same rule.

Notation follows Leviathan et al. / Chen et al. (2023): p = target, q = draft.
Pure functions of tensors and an RNG: no model in here, so it is tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaspec.config import SamplingParams
from adaspec.sampling import probabilities, sample


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one draft."""

    tokens: list[int]  # [n_accepted + 1]: accepted draft prefix, then recovered or bonus token
    n_accepted: int


def verify(
    target_logits: torch.Tensor,  # [k + 1, vocab]: row i scores the token after x_1..x_i
    draft_tokens: Sequence[int],  # [k]
    draft_probs: torch.Tensor | None,  # [k, vocab] warped q rows; None = deterministic drafter
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Accept a prefix of the draft so that the output follows the target exactly."""
    k = len(draft_tokens)
    if target_logits.shape[0] != k + 1:
        raise ValueError(f"need {k + 1} target rows for a {k}-token draft")
    if params.greedy:
        return verify_greedy(target_logits, draft_tokens)
    return verify_sampling(
        probabilities(target_logits, params), draft_tokens, draft_probs, generator
    )


def verify_greedy(target_logits: torch.Tensor, draft_tokens: Sequence[int]) -> Verdict:
    """Accept the longest draft prefix equal to the target's argmax, then the target's own
    next token. Identical to greedy autoregressive decoding, token for token."""
    choice = target_logits.argmax(-1).tolist()  # [k + 1]; one host sync per step
    n = 0
    while n < len(draft_tokens) and draft_tokens[n] == choice[n]:
        n += 1
    return Verdict([*draft_tokens[:n], choice[n]], n)


def verify_sampling(
    p: torch.Tensor,  # [k + 1, vocab] target probabilities, already warped
    draft_tokens: Sequence[int],  # [k], x_i drawn from q_i
    q: torch.Tensor | None,  # [k, vocab]; None means one-hot at x_i (n-gram drafts)
    generator: torch.Generator | None = None,
) -> Verdict:
    """Speculative sampling: the kept tokens are distributed exactly as p.

    Accept rule, token by token:
      accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
      on the first rejection draw the recovered token from norm(max(0, p_i - q_i));
      if all k are accepted draw a bonus token from p_{k+1}.
    """
    k = len(draft_tokens)
    if k == 0:
        return Verdict([sample(p[0], generator)], 0)
    x = torch.tensor(list(draft_tokens), device=p.device)  # [k]
    rows = torch.arange(k, device=p.device)
    p_x = p[rows, x]  # [k]
    q_x = q[rows, x].to(p.device) if q is not None else torch.ones_like(p_x)  # [k]
    u = torch.rand(k, generator=generator).to(p.device)  # [k], CPU generator like sample()
    rejected = (u * q_x >= p_x).nonzero()  # u < p/q  <=>  u * q < p, without dividing by q
    if rejected.numel() == 0:
        return Verdict([*draft_tokens, sample(p[k], generator)], k)
    n = int(rejected[0])
    q_n = q[n].to(p.device) if q is not None else torch.nn.functional.one_hot(x[n], p.shape[-1])
    recovered = sample(residual(p[n], q_n), generator)
    return Verdict([*draft_tokens[:n], recovered], n)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) [vocab]: what the target still owes after a rejected draw from
    q. Its mass is > 0 whenever a rejection is possible; falling back to p only absorbs
    float round-off."""
    owed = (p - q).clamp_min(0.0)  # [vocab]
    mass = owed.sum()
    return owed / mass if mass > 0 else p
