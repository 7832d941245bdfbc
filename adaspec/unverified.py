"""Drafts a plain step left unverified, judged as the text they guessed is committed.

Where only near-sure drafts pay (llama.cpp on a CPU), a lookup whose confidence starts
below that is never verified, and evidence from verified drafts alone would never show
that it is right. Its tokens are a function of the committed text, so whether each would
have been accepted can be read off the tokens the target goes on to choose, costing no
target row (docs/methods.md, "drafts not verified").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from adaspec.draft import Draft
from adaspec.stats import Unverified
from adaspec.tree import TokenTree
from adaspec.verify import judge_unverified


@dataclass(frozen=True)
class Pending:
    start: int  # committed tokens when it was drafted: it guesses those from here on
    draft: Draft
    tree: TokenTree  # the draft's, built once: it is walked every step until judged


@dataclass
class UnverifiedDrafts:
    """One request's drafts waiting to be judged, one per drafter: that drafter's next
    plain-step draft waits only once the committed text has reached the end of this one or
    left it. Consecutive drafts of a lookup guess mostly the same tokens, and judging each
    would count that evidence many times. Judged over as many steps as it takes, deep
    nodes count as a verify counts them: judged against the next token only, a chain's
    first nodes (likelier right than deeper ones of the same confidence) made the
    calibration promise too much."""

    pending: dict[str, Pending] = field(default_factory=dict)

    def wait(self, drafts: Sequence[Draft], start: int) -> None:
        """Unsampled drafts of a step that verified none, drafted after ``start`` tokens."""
        for draft in drafts:
            if draft.tokens and not draft.sampled and draft.source not in self.pending:
                self.pending[draft.source] = Pending(start, draft, draft.tree)

    def judge(self, tokens: Sequence[int]) -> tuple[Unverified, ...]:
        """The waiting drafts the committed ``tokens`` now judge completely."""
        done = []
        for name, waiting in list(self.pending.items()):
            judgement = judge_unverified(waiting.tree, tokens[waiting.start :])
            if judgement.complete:
                del self.pending[name]
                done.append(_unverified(waiting.draft, judgement.judged))
        return tuple(done)


def _unverified(draft: Draft, judged: list[tuple[int, bool]]) -> Unverified:
    known = len(draft.confidences)
    tried = tuple((draft.confidences[i], ok) for i, ok in judged if i < known)
    return Unverified(draft.source, tried, sum(ok for _, ok in judged), len(judged))
