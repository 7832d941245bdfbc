"""How many tokens a draft is expected to yield and at what rate: the pure arithmetic of
goodput (SmartSpec), expected tokens per millisecond of a step."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one step yields with k drafted, each accepted with this probability in turn
    (the step always yields the target's own next token too): 1 + a + ... + a^k."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def best_length(
    acceptance: float,
    verify_ms: Callable[[int], float],
    draft_ms: float,
    k_max: int,
    k_min: int = 0,
    others: float = 0.0,
) -> int:
    """The k in k_min..k_max with the most expected tokens per millisecond of the step;
    ``others``: tokens the other requests sharing the step yield (``verify_ms`` then prices
    their rows too)."""
    return max(
        range(k_min, k_max + 1),
        key=lambda k: (others + expected_tokens(acceptance, k)) / (verify_ms(k + 1) + draft_ms * k),
    )


def best_prefix(
    probs: Sequence[float],
    verify_ms: Callable[[int], float],
    spent_ms: float,
    parents: Sequence[int] | None = None,
    others: float = 0.0,
    margin: float = 0.0,
) -> int:
    """How many drafted nodes to verify, given each one's acceptance probability given its
    parent's: the prefix with the most expected tokens per millisecond of this step."""
    return best_prefix_and_rate(probs, verify_ms, spent_ms, parents, others, margin)[0]


def best_prefix_and_rate(
    probs: Sequence[float],
    verify_ms: Callable[[int], float],
    spent_ms: float,
    parents: Sequence[int] | None = None,
    others: float = 0.0,
    margin: float = 0.0,
) -> tuple[int, float]:
    """Expected tokens of the first i nodes: 1 (the target's own) plus, per node, the
    chance that its whole root path is accepted; a chain when ``parents`` is None. With
    ``others`` as in best_length; ``margin``: a prefix must beat verifying none as if that
    yielded this many tokens more (hysteresis), and none is reported at its own rate."""
    expected = 1.0 + others
    best, plain_rate = 0, expected / (verify_ms(1) + spent_ms)
    best_rate = (expected + margin) / (verify_ms(1) + spent_ms)
    alive: list[float] = []  # [i] P(node's root path accepted)
    for i, p in enumerate(probs):
        parent = i - 1 if parents is None else parents[i]
        alive.append(p * (alive[parent] if parent >= 0 else 1.0))
        expected += alive[i]
        rate = expected / (verify_ms(i + 2) + spent_ms)
        if rate > best_rate:
            best, best_rate = i + 1, rate
    return best, (best_rate if best else plain_rate)
