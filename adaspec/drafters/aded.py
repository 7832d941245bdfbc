"""ADED (Liu et al., 2024): draft trees from a tri-gram table that adapts as it decodes.

The table maps the last two tokens to what followed them: each committed token counts,
and so does each verified row's top-k, weighted by the target's probability (rows of
rejected nodes too: each is the target's view after its own two tokens). Where a pair
was never seen, the last token alone is used (a bigram). Trees are grown best first, with
an exploration bonus for a branch drafted less often than its siblings, in the spirit of
ADED's MCTS draft maker: a candidate the table ranks low but that has not been tried gets
tried, and one tried often and rejected sinks. Kept across requests, fading with ``decay``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import ClassVar

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, OpenByCopy
from adaspec.drafters.growth import grow
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome

Key = tuple[int, ...]  # (a, b): a tri-gram's context; (b,): a bigram's
# How often a context's likeliest successor is the target's choice, per share of the
# context's weight, by context length: fitted on replayed answers (docs/methods.md). A
# share taken as the chance had goodput verify drafts that lost on llama.cpp.
CONTEXT_TRUST = {2: 0.7, 1: 0.35}


class _Fading:
    """How much a weight added now counts: it grows each step instead of every weight
    decaying."""

    scale = 1.0


@DRAFTERS.register("aded")
class AdedDrafter(OpenByCopy):
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = False
    row_top_k: ClassVar[int] = 4

    def __init__(self, width: int = 4, exploration: float = 0.3, decay: float = 0.999) -> None:
        self.width = width  # candidates per node
        self.exploration = exploration
        self.decay = decay
        self.weights: dict[Key, dict[int, float]] = defaultdict(dict)  # context -> next -> w
        self.tries: dict[tuple[Key, int], list[float]] = {}  # (context, next) -> [tried, kept]
        self._drafted: list[tuple[Key, int]] = []  # the last draft's nodes, by node index
        self._fading = _Fading()  # shared, like the tables, by every request's copy

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> AdedDrafter:
        return cls()

    def start(self, state: DecodeState) -> None:
        self._drafted = []
        tokens = state.tokens
        for i in range(1, len(tokens)):  # the prompt's own tri-grams
            self._count(tokens[i - 2] if i > 1 else tokens[i - 1], tokens[i - 1], tokens[i], 1.0)

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        self._drafted = []
        if budget.depth_limit == 0:
            return Draft(source="aded")
        before = state.tokens[-2] if len(state.tokens) > 1 else state.tokens[-1]
        grown = grow(
            before, state.tokens[-1], self.candidates, budget.max_tokens, budget.depth_limit
        )
        pairs = zip(grown.contexts, grown.tokens, strict=True)
        self._drafted = [(self._key(*context), x) for context, x in pairs]
        return Draft(grown.tokens, None, grown.confidences, "aded", grown.parents)

    def candidates(self, before: int, token: int) -> list[tuple[int, float, float]]:
        """Up to ``width`` successors: score = share of the context's weight (scaled by how
        far such a context is trusted) blended with the branch's past acceptance, plus the
        exploration bonus (capped at 1); confidence = the same without the bonus."""
        key = self._key(before, token)
        table = self.weights.get(key)
        if not table:
            return []
        total = sum(table.values()) / CONTEXT_TRUST[len(key)]  # a share, as P(accepted)
        tried_here = sum(self.tries.get((key, x), (0.0, 0.0))[0] for x in table)
        scored = []
        for x, w in table.items():
            tried, kept = self.tries.get((key, x), (0.0, 0.0))
            share = (kept + 2.0 * w / total) / (tried + 2.0)
            bonus = self.exploration * math.sqrt(math.log1p(tried_here) / (1.0 + tried))
            scored.append((x, min(1.0, share + bonus), share))
        scored.sort(key=lambda c: (-c[1], -c[2]))
        return scored[: self.width]

    def observe(self, outcome: StepOutcome) -> None:
        self._fading.scale /= self.decay
        if outcome.drafter == "aded" and self._drafted:
            for node, kept in outcome.judged():
                counts = self.tries.setdefault(self._drafted[node], [0.0, 0.0])
                counts[0] += 1.0
                counts[1] += float(kept)
        if outcome.rows is not None:
            rows = outcome.rows.informative()
            for before, fed, ids, probs in zip(
                rows.before, rows.fed, rows.top_ids, rows.top_probs, strict=True
            ):
                for x, p in zip(ids[: self.width], probs[: self.width], strict=True):
                    self._count(before, fed, x, p)
        if self._fading.scale > 1e6:  # renormalise before the numbers grow unwieldy
            self._rescale()

    def _count(self, a: int, b: int, x: int, weight: float) -> None:
        for key in ((a, b), (b,)):
            table = self.weights[key]
            table[x] = table.get(x, 0.0) + weight * self._fading.scale

    def _rescale(self) -> None:
        for table in self.weights.values():
            for x in table:
                table[x] /= self._fading.scale
        self._fading.scale = 1.0

    def _key(self, a: int, b: int) -> Key:
        """The tri-gram's context where it has been seen, else the bigram's."""
        return (a, b) if (a, b) in self.weights else (b,)
