"""The per-request decoding state that the engine shares with drafters and policies."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaspec.config import SamplingParams


@dataclass(frozen=True)
class Sharing:
    """The other requests in this step's target pass, as one request sees them when its
    budget is decided: the rows they add (for those not planned yet, as many as lately),
    the tokens they are expected to yield (as many as lately) and how many they are. A
    policy prices its own rows at their margin over these (SmartSpec)."""

    rows: int = 0
    tokens: float = 0.0
    requests: int = 0


ALONE = Sharing()


@dataclass
class DecodeState:
    """Committed tokens of one request.

    Invariant kept by the engine: the target's KV cache holds ``tokens[:-1]`` and the last
    committed token is fed to the target together with the next draft, except right after
    the prompt's prefill, when the cache holds all of ``tokens`` and ``next_logits`` is the
    row that scores what follows them.
    """

    tokens: list[int]  # prompt ids, then generated ids
    prompt_len: int
    sampling: SamplingParams
    generator: torch.Generator  # the one RNG of the request: draft sampling and verification
    next_logits: torch.Tensor | None = None  # [vocab] the prefill's row, until the first step
    # The request's limit: the tokens a drafter's set-up can pay off over.
    max_new_tokens: int | None = None
    slot: int = 0  # the backends' cache this request runs in (one per request in flight)
    sharing: Sharing = ALONE  # who else is in the step being planned (set by the engine)

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len
