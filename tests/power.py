"""Pearson's chi-square test of sampled counts against an exact distribution, and what it
can detect: the smallest total-variation error it finds with a stated power.

Power: for counts from a distribution r while the test assumes p, the statistic is about
noncentral chi-square with lambda = N * sum((r - p)^2 / p), and by Cauchy-Schwarz
lambda >= N * (sum |r - p|)^2 = 4 N TV^2. So an error of total variation delta is found
with at least the power that lambda = 4 N delta^2 gives, wherever the error lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ALPHA = 1e-3  # the test's level: counts this unlikely under the target fail it
POWER = 0.9


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    pooled_mass: float  # exact mass of the cells pooled for having expected count < 5
    samples: int

    def detectable_tv(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The total-variation error this test detects with ``power`` at level ``alpha``
        (errors hidden inside the pooled cells aside: at most ``pooled_mass`` more)."""
        lam = _needed_noncentrality(self.dof, alpha, power)
        return math.sqrt(lam / (4 * self.samples)) + self.pooled_mass


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> ChiSquare:
    """Pearson's test, cells with expected count < 5 pooled into one."""
    probs, counts = probs.flatten().double(), counts.flatten().double()
    n = float(counts.sum())
    expected = probs * n
    small = expected < 5
    obs, exp = counts[~small], expected[~small]
    if small.any():  # a token the target rules out lands here, with expected count ~0
        obs = torch.cat([obs, counts[small].sum().reshape(1)])
        exp = torch.cat([exp, expected[small].sum().reshape(1)])
    stat = float(((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum())
    dof = len(obs) - 1
    return ChiSquare(stat, dof, _survival(dof, stat), float(probs[small].sum()), int(n))


def _survival(dof: int, x: float, noncentrality: float = 0.0) -> float:
    """P(X > x) for X ~ chi-square(dof, noncentrality): a Poisson mixture of central ones."""
    half = noncentrality / 2
    terms = int(half + 12 * math.sqrt(half) + 40)
    total = 0.0
    for j in range(terms):
        weight = (
            math.exp(-half + j * math.log(half) - math.lgamma(j + 1)) if half else float(j == 0)
        )
        shape = torch.tensor((dof + 2 * j) / 2, dtype=torch.float64)
        total += weight * float(torch.special.gammaincc(shape, torch.tensor(x / 2.0)))
    return total


def _bisect(f, lo: float, hi: float, steps: int = 80) -> float:
    """The x in [lo, hi] where the increasing function f crosses 0."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return hi


def _needed_noncentrality(dof: int, alpha: float, power: float) -> float:
    critical = _bisect(lambda x: alpha - _survival(dof, x), 0.0, 10.0 * dof + 200.0)
    return _bisect(lambda lam: _survival(dof, critical, lam) - power, 0.0, 10.0 * dof + 500.0)
