"""A small draft language model with the target's vocabulary, drafting one token per pass.

Its KV cache is kept in step with the committed text lazily: before drafting, positions the
target rejected are rolled back and the tokens the draft has not seen yet (the prompt on the
first proposal, then the accepted tail and the target's recovered or bonus token) are fed in
one pass, which also yields the distribution of the first draft token.

With a window (LongSpec, StreamingLLM) the draft sees only the text's first SINKS tokens
and its last ``window`` or fewer, so its cache and its cost per token stop growing with the
prompt, and a long prompt is not prefilled into it whole. Only the draft is windowed: the
target verifies against the whole text, so the output is the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from adaspec.backends.base import Backend, check_same_vocabulary, slot_of
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, missing_draft_model
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.head import AcceptanceHead, head_path
from adaspec.sampling import probabilities, sample
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome
from adaspec.tree import common_prefix

SINKS = 4  # StreamingLLM's attention sinks: the text's first tokens, always in the window


def draft_view(tokens: Sequence[int], window: int) -> list[int]:
    """The text as a windowed draft sees it: the first SINKS tokens, then the last
    ``window`` or fewer. The window's start moves in steps of half a window, so the draft
    re-feeds its window once per window / 2 tokens, not at every step."""
    if window <= 0 or len(tokens) <= SINKS + window:
        return list(tokens)
    step = max(1, window // 2)
    start = SINKS + -(-(len(tokens) - SINKS - window) // step) * step
    return [*tokens[:SINKS], *tokens[start:]]


@DRAFTERS.register("model")
class ModelDrafter:
    needs_draft_model: ClassVar[bool] = True
    uses_draft_model: ClassVar[bool] = True
    row_top_k: ClassVar[int] = 0

    def __init__(
        self,
        backend: Backend,
        vocab_size: int,
        head: AcceptanceHead | None = None,
        max_rejection: float = 0.7,
        window: int = 0,
    ) -> None:
        self.backend = backend
        self.window = window  # the text's last tokens it attends to (0: all; draft_view)
        self.vocab_size = vocab_size  # the target's logits width; q rows must match it
        self.head = head
        self.max_rejection = max_rejection  # SpecDec++'s stop rule, used with a head
        self._fed: list[int] = []  # token ids held in the draft backend's cache
        self._head_p: float | None = None  # the head's P(accepted) for the row last fed

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> ModelDrafter:
        """With the acceptance head saved beside the draft model, if there is one."""
        if draft is None:
            raise missing_draft_model("model")
        check_same_vocabulary(target, draft)
        path = head_path(draft.label)
        head = AcceptanceHead.load(path) if path.exists() else None
        return cls(draft, target.vocab_size, head, window=options.draft_window)

    def open(self, state: DecodeState) -> ModelDrafter:
        """A copy on the draft model's cache for the request's slot."""
        request = copy.copy(self)
        request.backend = slot_of(self.backend, state.slot)
        request.start(state)
        return request

    def start(self, state: DecodeState) -> None:
        """The prompt is fed on the first proposal: a drafter the policy never asks
        costs nothing."""
        self.backend.reset()
        self._fed = []
        self._head_p = None

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        if budget.depth_limit == 0:
            return Draft(source="model")
        first = self.catch_up(state.tokens)  # [vocab]
        return draw_chain(
            first,
            lambda token: self._feed([token]),
            state,
            budget,
            "model",
            self._confidence,
            self._rejection_likely,
        )

    def _confidence(self, logits: torch.Tensor, q: torch.Tensor, state: DecodeState) -> float:
        """The head's prediction for the row last fed, where there is a head."""
        return draft_confidence(logits, q, state) if self._head_p is None else self._head_p

    def observe(self, outcome: StepOutcome) -> None:
        pass  # the cache is re-synchronised from the committed tokens in propose()

    def catch_up(self, tokens: Sequence[int]) -> torch.Tensor:
        """Roll back to the longest prefix shared with ``tokens`` and feed the rest in one
        forward that scores only the last (the prompt on the first call; after a fully
        accepted draft, its last token and the target's bonus token: one forward, not two).
        With a window, ``tokens`` as the window shows them (draft_view)."""
        tokens = draft_view(tokens, self.window)
        shared = common_prefix(self._fed, tokens)
        shared = min(shared, len(tokens) - 1)  # feed at least one token to get logits
        self.backend.rollback(shared)
        del self._fed[shared:]
        missing = tokens[shared:]
        if self.head is not None:  # the head reads the last token's hidden state
            self.backend.prefill(missing[:-1])
            self._fed.extend(missing[:-1])
            return self._feed(missing[-1:])
        self._fed.extend(missing)
        return fit_width(self.backend.score_prompt(missing), self.vocab_size)

    def _rejection_likely(self, all_accepted: float) -> bool:
        """SpecDec++: stop once P(some drafted token is rejected) passes the threshold."""
        return self.head is not None and 1.0 - all_accepted > self.max_rejection

    def _feed(self, tokens: Sequence[int]) -> torch.Tensor:
        self._fed.extend(tokens)
        if self.head is None:
            return fit_width(self.backend.forward(tokens)[-1], self.vocab_size)
        logits, hidden = self.backend.forward_hidden(tokens)
        self._head_p = float(self.head.probability(hidden[-1:], logits[-1:])[0])
        return fit_width(logits[-1], self.vocab_size)


def draw_chain(
    logits: torch.Tensor,  # [vocab] the draft's row for the first token
    next_row: Callable[[int], torch.Tensor],
    state: DecodeState,
    budget: Budget,
    source: str,
    confidence_of: Callable[[torch.Tensor, torch.Tensor, DecodeState], float] | None = None,
    give_up: Callable[[float], bool] = lambda all_accepted: False,
) -> Draft:
    """A chain drawn one token per row (``next_row(token)``: the row after it): q warped
    like p, its argmax under greedy decoding, else a sample. It stops before a token whose
    confidence is below the budget's or where ``give_up`` (P(every token so far is
    accepted)) says so, and once the budget has enough: each from what was known before
    the next token is drawn (docs/design.md, rule 1)."""
    confidence_of = confidence_of or draft_confidence
    tokens: list[int] = []
    rows: list[torch.Tensor] = []
    confidences: list[float] = []
    all_accepted = 1.0
    while True:
        q = probabilities(logits[None], state.sampling)[0]  # [vocab], warped like p
        confidence = confidence_of(logits, q, state)
        all_accepted *= confidence
        if confidence < budget.min_confidence or give_up(all_accepted):
            break
        token = int(q.argmax()) if state.sampling.greedy else sample(q, state.generator)
        tokens.append(token)
        rows.append(q)
        confidences.append(confidence)
        if budget.enough(confidences):
            break
        logits = next_row(token)
    probs = torch.stack(rows) if rows and not state.sampling.greedy else None  # [k, vocab]
    return Draft(tokens, probs, confidences, source)


def draft_confidence(logits: torch.Tensor, q: torch.Tensor, state: DecodeState) -> float:
    """Top probability of the draft: of q when sampling, of the plain softmax when greedy
    (a greedy q is one-hot and would always claim certainty)."""
    top = torch.softmax(logits.float(), -1).max() if state.sampling.greedy else q.max()
    return float(top)


def fit_width(row: torch.Tensor, width: int) -> torch.Tensor:
    """Draft logits on the target's vocabulary width (ids past a tokenizer are padding)."""
    if row.shape[-1] == width:
        return row
    if row.shape[-1] > width:
        return row[:width]
    return torch.nn.functional.pad(row, (0, width - row.shape[-1]), value=float("-inf"))
