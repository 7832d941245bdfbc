"""Online cost estimates the goodput policy plans with: what a step costs here and now.

Costs describe the machine, so they carry over from request to request (each request's
copy of a VerifyCost shares its timings), still weighted toward recent steps to follow
other load and a longer context; a new request does not pay again to learn what a forward
costs here. How likely a drafted token is to be accepted: adaspec/policies/acceptance.py.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from collections import deque

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
