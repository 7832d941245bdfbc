"""Online estimates of how likely the target is to accept a drafted token, for the goodput
policy.

Acceptance estimates describe the text, so they start afresh with each request (its own
copy) and follow it as it changes (a copy phase, free prose); what a drafter's confidence
means (the calibration) and how often it is right on average carry over, shared by every
request's copy, as the prior each request starts from.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections.abc import Sequence


class Acceptance:
    """P(the target accepts a drafted token), per drafter: this request's accepted tokens
    over its tested ones (a token after the first rejection is never tested), from
    ``pseudo`` tokens at the drafter's prior. Counts lose ``memory`` of their weight each
    step, so the estimate follows the text as it changes, and a drafter left unused drifts
    back toward its prior and is tried again. Pooling tokens, rather than averaging each
    step's own estimate, keeps one unlucky short draft (0 of 2 accepted) from writing off
    a drafter that is usually right.

    The prior is the drafter's own: its tested tokens over recent requests (``history`` of
    their weight left after each of its steps), from ``prior_weight`` tokens at ``prior``.
    How often a pair agrees belongs to the pair as much as to the text; a fixed guess kept
    a draft model that is often wrong drafting for several steps of every request.

    The text's part is read from the target before a drafter has drafted in the request:
    the target's own top probability at the positions it has decoded (free: every step
    scores them). A draft agrees with the target about as often as the target is sure of
    its token (measured: docs/methods.md), so the prior is scaled by this text's top
    probability over the one at the drafter's tested tokens in recent requests. A prose
    request then does not pay a draft model's set-up to learn what its plain steps said."""

    def __init__(
        self,
        prior: float = 0.7,
        pseudo: float = 2.0,
        memory: float = 0.9,
        history: float = 0.99,
        prior_weight: float = 10.0,
    ) -> None:
        self.prior = prior
        self.pseudo = pseudo
        self.memory = memory
        self.history = history
        self.prior_weight = prior_weight
        # drafter -> [accepted, tested, the target's sureness summed over the tested tokens],
        # this request (``counts``) and recent requests (``pooled``)
        self.counts: dict[str, list[float]] = {}
        self.pooled: dict[str, list[float]] = {}
        self.text = [0.0, 0.0]  # this request: [sum of the target's top probabilities, rows]
        self.sureness = [0.0, 0.0]  # the same over recent requests

    def start(self) -> None:
        self.counts = {}
        self.text = [0.0, 0.0]

    def for_request(self) -> Acceptance:
        """A copy for one request: its own counts, sharing the drafters' history."""
        request = copy.copy(self)
        request.start()
        return request

    def observe_target(self, top: float | None) -> None:
        """The target's top probability at the row a step took its own token from."""
        if top is None:
            return
        for table, memory in ((self.text, self.memory), (self.sureness, self.history)):
            _age(table, memory)
            table[0] += top
            table[1] += 1

    def observe(self, drafter: str, drafted: int, accepted: int, trimmed: bool = False) -> None:
        """``trimmed``: tokens were drafted past those verified, and are counted as a
        rejection after the accepted ones. For a drafter that pays per token this is what
        such a step yields (the target's own token after the kept ones) for what its
        drafting cost: a draft model whose first token is too doubtful to verify wastes a
        forward, and must look less promising for it, not unchanged. The tested tokens are
        pooled with how sure the target is of the text now."""
        self.observe_tested(
            drafter, accepted + (1 if accepted < drafted or trimmed else 0), accepted
        )

    def observe_tested(self, drafter: str, tested: float, accepted: float) -> None:
        """Tokens the target judged (in a tree: the nodes whose parent was accepted) and
        how many of them it accepted."""
        sure = self._sureness_now()
        for table, memory in ((self.counts, self.memory), (self.pooled, self.history)):
            counts = table.setdefault(drafter, [0.0, 0.0, 0.0])
            _age(counts, memory)
            counts[0] += accepted
            counts[1] += tested
            counts[2] += tested * sure

    def idle_except(self, drafter: str) -> None:
        """A step that did not test the other drafters: their evidence ages."""
        for name, counts in self.counts.items():
            if name != drafter:
                _age(counts, self.memory)

    def rate(self, drafter: str) -> float:
        accepted, tested = self.counts.get(drafter, (0.0, 0.0, 0.0))[:2]
        return (accepted + self.pseudo * self.prior_of(drafter)) / (tested + self.pseudo)

    def prior_of(self, drafter: str) -> float:
        """What a request starts from: the drafter's acceptance over recent requests,
        scaled by how sure the target is of this text against the texts it was tested on
        (with no history, the first request of a process, that is the target's sureness
        itself, so a prose request does not buy the draft model)."""
        accepted, tested, sure_at_tests = self.pooled.get(drafter, (0.0, 0.0, 0.0))
        rate = (accepted + self.prior_weight * self.prior) / (tested + self.prior_weight)
        if not self.sureness[1]:
            return rate  # nothing decoded yet: nothing to compare the text with
        # The prior's tokens were tested where the target was as sure as the prior rate: a
        # pair with no history agrees as often as the target is sure of this text.
        tested_at = (sure_at_tests + self.prior_weight * self.prior) / (tested + self.prior_weight)
        return min(0.98, max(0.02, rate * self._sureness_now() / tested_at))

    def _sureness_now(self) -> float:
        """The target's mean top probability over this request's recent rows, from
        ``pseudo`` rows at its usual one (1.0 before anything was decoded: unused then)."""
        usual = self.sureness[0] / self.sureness[1] if self.sureness[1] else 1.0
        return (self.text[0] + self.pseudo * usual) / (self.text[1] + self.pseudo)


def _age(counts: list[float], memory: float) -> None:
    for i in range(len(counts)):
        counts[i] *= memory


class Calibration:
    """A drafter's per-token confidence mapped to the probability that the target accepts
    the token, as a logistic model: logit P = logit(the confidence's rate) + this text's
    offset.

    Raw confidences (a draft model's top probability, an n-gram's match length) are rarely
    probabilities of acceptance. What a confidence bin means belongs to the drafter and the
    model pair more than to one text, so a bin's rate counts tested tokens over all requests,
    the older weighing less (``memory``: the weight left to a count after one step), from
    ``pseudo`` tokens at the raw confidence; a bin not tried for a while drifts back to the
    raw confidence and gets tried again. How much likelier this text is to be copied or
    predicted than the average is one number per request and drafter, the offset: it starts
    at 0 with variance ``spread``, follows each tested token by an online Newton step and
    forgets (``forget`` of its precision, ``revert`` of its mean toward 0, each step), so a
    miss after a short match also makes long matches less likely now, and a text that
    changes is followed within a few steps. Decisions use the offset ``caution`` standard
    deviations below its mean: the best-looking draft is the one whose chance is most
    overestimated (the optimizer's curse), most of all before the text has shown anything.
    """

    EDGES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)

    def __init__(
        self,
        memory: float = 0.98,
        pseudo: float = 2.0,
        spread: float = 4.0,
        forget: float = 0.2,
        revert: float = 0.05,
        caution: float = 0.2,
    ) -> None:
        self.memory = memory
        self.pseudo = pseudo
        self.spread = spread
        self.forget = forget
        self.revert = revert
        self.caution = caution
        self.counts: dict[tuple[str, int], list[float]] = {}  # [accepted, tried], all requests
        self.offsets: dict[str, list[float]] = {}  # this request: drafter -> [mean, precision]
        self._points: dict[str, tuple[tuple[float, float], ...]] = {}  # kept until it learns

    def start(self) -> None:
        self.offsets = {}
        self._points = {}

    def for_request(self) -> Calibration:
        """A copy for one request: its own offsets, sharing the confidence bins."""
        request = copy.copy(self)
        request.start()
        return request

    def observe(self, drafter: str, confidences: Sequence[float], accepted: int) -> None:
        """A chain's step: tokens after the first rejection were not tested."""
        tried = confidences[: accepted + 1]
        self.observe_tried(drafter, [(c, i < accepted) for i, c in enumerate(tried)])

    def observe_tried(self, drafter: str, tried: Sequence[tuple[float, bool]]) -> None:
        """(confidence, accepted) of each node the target judged."""
        self._age(drafter)
        confidences = [c for c, _ in tried]
        outcomes = [1.0 if ok else 0.0 for _, ok in tried]
        self._fit_offset(drafter, confidences, outcomes)
        self._count(drafter, tried)

    def observe_unverified(self, drafter: str, tried: Sequence[tuple[float, bool]]) -> None:
        """(confidence, matched) of the nodes of a draft not verified, judged later by the
        committed text: its bins learn what a confidence means (aged with the drafter's
        steps as ever), but not this request's offset. The judgement arrives once the text
        has reached the draft's end, maybe many steps on, and moving the offset then by a
        long match that is over made the next drafts look surer than they were."""
        self._count(drafter, tried)

    def _count(self, drafter: str, tried: Sequence[tuple[float, bool]]) -> None:
        self._points.pop(drafter, None)
        for confidence, ok in tried:
            counts = self.counts.setdefault((drafter, self._bin(confidence)), [0.0, 0.0])
            counts[0] += 1.0 if ok else 0.0
            counts[1] += 1.0

    def probability(self, drafter: str, confidence: float) -> float:
        """The acceptance probability to plan with, for a token of this confidence."""
        mean, precision = self.offsets.get(drafter, (0.0, self._prior_precision()))
        return self._predict(drafter, confidence, mean - self.caution / math.sqrt(precision))

    def points(self, drafter: str) -> tuple[tuple[float, float], ...]:
        """``probability`` at each bin's ends, ascending: a drafter reads P(accepted) of
        any confidence off the straight lines between them (Budget.probability). Read every
        step for every drafter, so kept until the drafter's tokens are judged again."""
        if drafter not in self._points:
            ends = [0.0]
            for edge in self.EDGES:
                ends += [edge - 1e-6, edge]
            ends.append(1.0)
            self._points[drafter] = tuple((c, self.probability(drafter, c)) for c in ends)
        return self._points[drafter]

    def idle_except(self, drafter: str) -> None:
        """A step that did not test the other drafters: their bins age as if tested, so a
        drafter judged badly on a few tokens drifts back to its raw confidence and is tried
        again. Aged only when tested, an arm of auto whose first tokens missed planned with
        that verdict for good: never verified, it never learned it had become good."""
        for (name, _), counts in self.counts.items():
            if name != drafter:
                counts[0] *= self.memory
                counts[1] *= self.memory
                self._points.pop(name, None)

    def rate(self, drafter: str, confidence: float) -> float:
        """The share of such tokens accepted so far, recent ones weighing most (before any:
        the raw confidence)."""
        accepted, tried = self.counts.get((drafter, self._bin(confidence)), (0.0, 0.0))
        return (accepted + self.pseudo * confidence) / (tried + self.pseudo)

    def _age(self, drafter: str) -> None:
        """One step older: counts weigh less, the offset leans back toward 0 and its
        precision toward the prior's."""
        offset = self.offsets.setdefault(drafter, [0.0, self._prior_precision()])
        offset[0] *= 1.0 - self.revert
        offset[1] += self.forget * (self._prior_precision() - offset[1])
        for key, counts in self.counts.items():
            if key[0] == drafter:
                counts[0] *= self.memory
                counts[1] *= self.memory

    def _fit_offset(
        self, drafter: str, confidences: Sequence[float], outcomes: Sequence[float]
    ) -> None:
        """One Newton step of the logistic log-likelihood in the offset (outcomes: 1.0
        accepted, 0.0 rejected)."""
        offset = self.offsets[drafter]
        predicted = [self._predict(drafter, c, offset[0]) for c in confidences]
        offset[1] += sum(p * (1.0 - p) for p in predicted)
        offset[0] += sum(y - p for y, p in zip(outcomes, predicted, strict=True)) / offset[1]

    def _predict(self, drafter: str, confidence: float, offset: float) -> float:
        """The model's probability for a token of this confidence, given the offset."""
        return _sigmoid(_logit(self.rate(drafter, confidence)) + offset)

    def _prior_precision(self) -> float:
        return 1.0 / self.spread

    def _bin(self, confidence: float) -> int:
        return bisect_right(self.EDGES, confidence)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))  # no overflow for any x
