"""The auto drafter: every drafter that can work here, as arms the policy chooses among.

Which drafter pays depends on the text (n-gram lookup wins where output copies the prompt,
a draft model where it does not) and on the machine (a draft model that costs half a
target step cannot win on a CPU). Auto decides nothing itself: it is the set of arms,
cheapest to propose first, and each step the policy's budget names the ones to ask
(goodput: those whose promised rate beats the draft in hand; the others: a bandit's pick;
docs/methods.md). With no draft model it holds the model-free drafters only.
"""

from __future__ import annotations

from typing import ClassVar

from adaspec.backends.base import Backend
from adaspec.drafters.base import DRAFTERS, Drafter, DrafterSet
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.model_tree import ModelTreeDrafter
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.state import DecodeState

# The model-free arms, cheapest to propose first: each is asked (it costs next to nothing)
# and the policy values what it proposes.
MODEL_FREE_ARMS = ("ngram", "suffix", "recycling", "aded")


@DRAFTERS.register("auto")
class AutoDrafter(DrafterSet):
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = True  # as an arm, when one is given

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> AutoDrafter:
        arms: dict[str, Drafter] = {
            name: DRAFTERS.get(name).create(target, None, options) for name in MODEL_FREE_ARMS
        }
        shares = dict.fromkeys(arms, 0.0)
        if draft is not None:
            model = ModelDrafter.create(target, draft, options)
            arms["model"], arms["model-tree"] = model, ModelTreeDrafter(model)  # one cache
            shares["model"] = shares["model-tree"] = draft.weight_bytes / max(
                target.weight_bytes, 1
            )
        return cls(arms, shares)

    def open(self, state: DecodeState) -> DrafterSet:
        """Every arm opened; the tree arm on the chain arm's cache, as when created."""
        arms: dict[str, Drafter] = {}
        for name, arm in self.arms.items():
            chain = arms.get("model")
            if isinstance(arm, ModelTreeDrafter) and isinstance(chain, ModelDrafter):
                arms[name] = arm.open(state, chain)
            else:
                arms[name] = arm.open(state)
        return self._with(arms)
