"""``self``: the target drafts for itself, exiting after its first layers (DEL, LayerSkip,
SWIFT), its own final norm and LM head scoring the draft; no second model in memory.

Which exit is chosen each step from what was measured: each candidate layer's acceptance
(recent drafts weigh most, so it follows the text) against what its tokens cost, the
share of the layers it runs. An exit not tried for a while looks optimistic again (UCB),
so a layer that did poorly on one passage is tried on the next. The exit is chosen before
any token is drawn, so it never depends on the draft (docs/design.md, rule 1).
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch

from adaspec.backends.base import Backend, slot_of
from adaspec.backends.early_exit import EarlyExit
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS
from adaspec.drafters.model import draw_chain, fit_width
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.errors import ModelError
from adaspec.policies.rates import expected_tokens
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome

# Candidate exits, as shares of the layers: untrained exits agree with the target only
# in the last quarter or so of its layers (docs/benchmarks.md), so the choice is there.
EXIT_FRACTIONS = (0.5, 0.625, 0.75, 0.875, 0.93)
MEMORY = 0.97  # each judged draft keeps this share of an exit's earlier counts
EXPLORE = 0.5  # weight of the UCB bonus


class ExitChoice:
    """Acceptance per candidate exit, shared by a drafter's requests; picks the exit whose
    tokens are expected to come cheapest."""

    def __init__(self, layers: int) -> None:
        self.layers = layers
        self.exits = sorted({min(layers - 1, max(1, round(f * layers))) for f in EXIT_FRACTIONS})
        self.judged = dict.fromkeys(self.exits, 0.0)
        self.accepted = dict.fromkeys(self.exits, 0.0)
        self.rounds = 0

    def choose(self, depth: int) -> int:
        self.rounds += 1
        return max(self.exits, key=lambda exit: self.rate(exit, depth))

    def rate(self, exit: int, depth: int) -> float:
        """Expected tokens per forward's worth of work: ``depth`` tokens drafted at the
        exit's share of a forward each, then one verifying pass."""
        tokens = expected_tokens(self.optimistic(exit), depth)
        return tokens / (depth * exit / self.layers + 1.0)

    def acceptance(self, exit: int) -> float:
        """Recent share of the exit's judged tokens accepted (a Laplace prior of 1/2)."""
        return (self.accepted[exit] + 1.0) / (self.judged[exit] + 2.0)

    def optimistic(self, exit: int) -> float:
        bonus = EXPLORE * math.sqrt(math.log(self.rounds + 1.0) / (self.judged[exit] + 1.0))
        return min(1.0, self.acceptance(exit) + bonus)

    def observe(self, exit: int, judged: int, accepted: int) -> None:
        self.judged[exit] = MEMORY * self.judged[exit] + judged
        self.accepted[exit] = MEMORY * self.accepted[exit] + accepted


@DRAFTERS.register("self")
class SelfDrafter:
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = False
    row_top_k: ClassVar[int] = 0

    def __init__(self, target: Backend, choice: ExitChoice) -> None:
        self.target = target
        self.choice = choice  # shared by every request's copy
        self.exit: int | None = None  # the exit of this request's last draft

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> SelfDrafter:
        layers = target.exit_layers if isinstance(target, EarlyExit) else 0
        if layers < 2:
            why = (
                "llama.cpp's API has no partial forward"
                if target.name == "llama.cpp"
                else "its layers are not laid out as a Llama-family model's"
            )
            raise ModelError(
                f"the self drafter needs a backend that can stop after some layers; "
                f"{target.name} runs every layer of {target.label!r} ({why}): "
                "use --backend torch, or --drafter suffix or ngram"
            )
        return cls(target, ExitChoice(layers))

    def open(self, state: DecodeState) -> SelfDrafter:
        """A copy on the target's cache for the request's slot."""
        request = copy.copy(self)
        request.target = slot_of(self.target, state.slot)
        request.start(state)
        return request

    def start(self, state: DecodeState) -> None:
        self.exit = None

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        if budget.depth_limit == 0:
            return Draft(source="self")
        self.exit = self.choice.choose(budget.depth_limit)
        text, width = list(state.tokens), self.target.vocab_size
        with self.target.early_exit(self.exit) as run:

            def next_row(token: int) -> torch.Tensor:
                text.append(token)
                return fit_width(run(text), width)

            first = fit_width(run(text), width)
            return draw_chain(first, next_row, state, budget, "self")

    def observe(self, outcome: StepOutcome) -> None:
        if outcome.drafter == "self" and self.exit is not None and outcome.drafted:
            judged = outcome.judged()
            self.choice.observe(self.exit, len(judged), sum(ok for _, ok in judged))
