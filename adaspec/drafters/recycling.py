"""Token Recycling (Luo et al., 2024): draft from the candidates the target itself scored.

Every verify pass scores, for each token it was fed, a distribution over what follows;
its top-k tokens would be thrown away. Here they are kept in an adjacency matrix [vocab, k]
(for each token, the target's k likeliest successors the last time it scored one after
it) and a tree is grown from it below the last committed token. Every row updates it,
those of rejected nodes too, and it is kept across requests. Model-free and nearly free:
what it costs is the verify pass's extra rows, which the policy prices.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, OpenByCopy
from adaspec.drafters.growth import grow
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


def recycled_confidence(p: float) -> float:
    """The chance that a recycled successor the target once gave probability p is the
    target's choice now: 0.08 + 0.25 p^4, fitted on replayed answers (docs/methods.md).
    The target's probability then says little of now (another context); taken as it is,
    p had goodput verify drafts that lost on llama.cpp."""
    return 0.08 + 0.25 * p**4


@DRAFTERS.register("recycling")
class RecyclingDrafter(OpenByCopy):
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = False
    row_top_k: ClassVar[int] = 8

    def __init__(self, vocab_size: int, width: int = 8) -> None:
        self.width = width
        self.ids = np.full((vocab_size, width), -1, dtype=np.int64)  # [vocab, k]; -1: none
        self.probs = np.zeros((vocab_size, width), dtype=np.float32)  # [vocab, k]

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> RecyclingDrafter:
        return cls(target.vocab_size, cls.row_top_k)

    def start(self, state: DecodeState) -> None:
        pass  # what the target scored stays useful across requests

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        if budget.depth_limit == 0 or len(state.tokens) < 1:
            return Draft(source="recycling")
        before = state.tokens[-2] if len(state.tokens) > 1 else state.tokens[-1]
        grown = grow(
            before, state.tokens[-1], self.candidates, budget.max_tokens, budget.depth_limit
        )
        return Draft(grown.tokens, None, grown.confidences, "recycling", grown.parents)

    def candidates(self, before: int, token: int) -> list[tuple[int, float, float]]:
        """The target's successors of ``token``, scored by the probability it gave them
        then, with ``recycled_confidence`` of it as the chance it is accepted now."""
        ids, probs = self.ids[token], self.probs[token]
        return [
            (int(i), float(p), recycled_confidence(float(p)))
            for i, p in zip(ids, probs, strict=True)
            if i >= 0
        ]

    def observe(self, outcome: StepOutcome) -> None:
        rows = outcome.rows.informative() if outcome.rows is not None else None
        if rows is None or not rows.fed:
            return
        fed = np.asarray(rows.fed, dtype=np.int64)  # [rows]
        ids = np.asarray(rows.top_ids, dtype=np.int64)[:, : self.width]  # [rows, <= k]
        width = ids.shape[1]  # fewer than k in a vocabulary smaller than k
        self.ids[fed, :width] = ids
        self.probs[fed, :width] = np.asarray(rows.top_probs, dtype=np.float32)[:, :width]
