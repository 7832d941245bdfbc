"""No draft: every step is one plain autoregressive target pass through the same engine,
the baseline every speedup is measured against."""

from __future__ import annotations

from typing import ClassVar

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, OpenByCopy
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@DRAFTERS.register("none")
class NoDrafter(OpenByCopy):
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = False
    row_top_k: ClassVar[int] = 0

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> NoDrafter:
        return cls()

    def start(self, state: DecodeState) -> None:
        pass

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        return Draft()

    def observe(self, outcome: StepOutcome) -> None:
        pass
