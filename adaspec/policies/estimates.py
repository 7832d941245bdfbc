"""Online estimates the goodput policy plans with: what a step costs here and now, and how
likely the target is to accept a drafted token.

Acceptance estimates describe the text, so they start afresh with each request and follow
it as it changes (a copy phase, free prose); what a drafter's confidence means (the
calibration) and how often it is right on average carry over, as the prior each request
starts from. Costs describe the machine, so they carry over from request to request, still
weighted toward recent steps to follow other load and a longer context; a new request does
not pay again to learn what a forward costs here.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence

from adaspec.profile import CostProfile


class Ewma:
    """Exponentially weighted mean: recent steps count most."""

    def __init__(self, weight: float = 0.3) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


class RecentMin:
    """The least of the last ``window`` samples. A forward's time is its cost plus whatever
    else the machine did meanwhile (the first forwards of a process also fault in weights and
    allocate buffers), so the least of a few recent timings is the cost; the window lets a
    lasting change (a longer context, other load) through within that many samples. A mean
    would keep a cold start's cost as long as drafting leaves no one-token step to correct
    it, and speculation would be measured against a plain step too dear."""

    def __init__(self, window: int = 5) -> None:
        self.samples: deque[float] = deque(maxlen=window)
        self.value: float | None = None  # kept, not recomputed: read many times a step

    def add(self, x: float) -> None:
        self.samples.append(x)
        self.value = min(self.samples)


class DraftCost(Ewma):
    """Milliseconds per drafted token, for one drafter. A step's sample counts at most
    ``jump`` times the estimate: a draft model that sat out some steps (the n-gram drafted
    meanwhile) first feeds what it skipped, a one-off that says little of what a token
    costs; a lasting change still comes through, at most 15% a step. A drafter priced out
    is not asked, so never timed again: while unused its estimate drifts back toward the
    cheapest it has been (``recall`` a step), and it gets asked again in time."""

    def __init__(self, weight: float = 0.3, jump: float = 1.5, recall: float = 0.05) -> None:
        super().__init__(weight)
        self.jump = jump
        self.recall = recall
        self.floor: float | None = None  # the cheapest sample seen

    def add(self, x: float) -> None:
        super().add(x if self.value is None else min(x, self.jump * self.value))
        self.floor = x if self.floor is None else min(self.floor, x)

    def idle(self) -> None:
        if self.value is not None and self.floor is not None:
            self.value += self.recall * (self.floor - self.value)


class VerifyCost:
    """Milliseconds of one target forward over n positions.

    Sizes already seen use the least of their recent timings (RecentMin). Others follow the
    saved CostProfile's shape, scaled by how the nearest seen size compares with its profiled
    cost (the profile was timed on another day, under other load); without a profile, a line
    through the observations, with a guessed slope (``guess_slope`` of a one-token forward
    per extra position) until two sizes have been seen. The guess is optimistic (GPU-like)
    on purpose: a pessimistic one is never tested, since no draft looks worth a forward
    believed dear, and speculation would stay off on a machine where it pays; an optimistic
    one costs at most a draft or two before the first multi-token forward is timed.
    """

    def __init__(self, profile: CostProfile | None = None, guess_slope: float = 0.1) -> None:
        self.profile = profile
        self.guess_slope = guess_slope
        self.context = 0
        self.seen: dict[int, RecentMin] = {}
        # ms() by (n, context) since the last timing: a step's planning reads each size
        # many times (every drafter's length, every prefix).
        self._known: dict[tuple[int, int], float] = {}

    def start(self, context: int) -> None:
        """A new request: its context length; what was seen of the machine is kept."""
        self.context = context

    def for_request(self, context: int) -> VerifyCost:
        """A copy for one request, with its own context, sharing the timings."""
        request = copy.copy(self)
        request.start(context)
        return request

    def observe(self, n: int, ms: float, context: int) -> None:
        """A step that ran a forward over n positions (n = 0: the prefill had scored its
        only row, so it says nothing of a forward's cost) and left this much context."""
        self.context = context
        if n:
            self.seen.setdefault(n, RecentMin()).add(ms)
            self._known.clear()

    def timings(self, n: int) -> int:
        """How many recent forwards over n positions the estimate rests on."""
        return len(self.seen[n].samples) if n in self.seen else 0

    def explored_limit(self) -> int:
        """The most positions worth verifying before more is known: twice the largest size
        seen, so a guessed cost is trusted at most one doubling beyond the evidence."""
        return 2 * max(self.seen, default=1)

    def ms(self, n: int) -> float:
        """Capped by every larger size seen: a forward over fewer positions does not cost
        more, and a size timed once long ago (or in a noisy moment) must not make a short
        draft look dearer than a longer one."""
        key = (n, self.context)
        if key not in self._known:
            larger = [e.value or 0.0 for m, e in self.seen.items() if m > n]
            self._known[key] = min([self._estimate(n), *larger])
        return self._known[key]

    def _estimate(self, n: int) -> float:
        if n in self.seen:
            return self.seen[n].value or 0.0
        if self.profile is not None:
            return self.profile.cost_ms(n, self.context) * self._scale(n)
        return self._line(n)

    def _scale(self, n: int) -> float:
        if not self.seen or self.profile is None:
            return 1.0
        near = min(self.seen, key=lambda size: abs(size - n))
        return (self.seen[near].value or 0.0) / max(self.profile.cost_ms(near, self.context), 1e-6)

    def _line(self, n: int) -> float:
        points = sorted((size, e.value or 0.0) for size, e in self.seen.items())
        if not points:
            return 1.0 + self.guess_slope * (n - 1)  # unit cost: only ratios matter yet
        if len(points) == 1:
            size, ms = points[0]
            return ms * (1.0 + self.guess_slope * (n - size) / size)
        sizes = [size for size, _ in points]
        i = min(max(bisect_right(sizes, n), 1), len(points) - 1)  # the two points around n
        (n0, m0), (n1, m1) = points[i - 1], points[i]
        slope = max(0.0, (m1 - m0) / (n1 - n0))
        return max(1e-6, m0 + slope * (n - n0))


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
        self._points.pop(drafter, None)
        self._age(drafter)
        confidences = [c for c, _ in tried]
        outcomes = [1.0 if ok else 0.0 for _, ok in tried]
        self._fit_offset(drafter, confidences, outcomes)
        for confidence, y in zip(confidences, outcomes, strict=True):
            counts = self.counts.setdefault((drafter, self._bin(confidence)), [0.0, 0.0])
            counts[0] += y
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
