"""verify.py on synthetic distributions: input/expected tables, then statistics."""

from __future__ import annotations

import pytest
import torch

from adaspec.config import SamplingParams
from adaspec.sampling import sample
from adaspec.verify import Verdict, verify, verify_greedy, verify_sampling


def one_hot_rows(choices: list[int], vocab: int = 8) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(choices), vocab).double() * 5.0


@pytest.mark.parametrize(
    ("target_argmax", "draft", "expected", "n_accepted"),
    [
        ([3], [], [3], 0),  # no draft: a plain autoregressive step
        ([1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4], 3),  # all accepted, plus the bonus
        ([1, 2, 3, 4], [1, 5, 3], [1, 2], 1),  # first mismatch: the target's token replaces it
        ([1, 2, 3, 4], [0, 2, 3], [1], 0),  # rejected at once
        ([1, 2, 3, 4], [1, 2, 0], [1, 2, 3], 2),  # a later match after a mismatch never counts
    ],
)
def test_greedy_table(target_argmax, draft, expected, n_accepted):
    verdict = verify_greedy(one_hot_rows(target_argmax), draft)
    assert verdict.tokens == expected
    assert verdict.n_accepted == n_accepted


def test_verify_checks_row_count():
    with pytest.raises(ValueError):
        verify(one_hot_rows([1, 2]), [1, 2], None, SamplingParams())


def test_sampling_accepts_draft_equal_to_target():
    p = torch.softmax(torch.randn(3, 8, dtype=torch.float64), -1)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        verdict = verify_sampling(p, [2, 5], p[:2].clone(), g)
        assert verdict.n_accepted == 2  # p(x)/q(x) = 1: always accepted


def test_sampling_never_keeps_a_token_the_target_rules_out():
    p = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        verdict = verify_sampling(p, [0], None, g)  # deterministic draft of an impossible token
        assert verdict.n_accepted == 0
        assert verdict.tokens[0] in (1, 2)


def distribution(samples: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(samples), minlength=vocab).double() / len(samples)


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def output_errors(rule, deterministic: bool) -> tuple[float, float]:
    """TV of the first emitted token from p_1, and of the second (given the first draft
    token was kept) from p_2, over n = 20000 drafts judged by ``rule``."""
    vocab, k, n = 6, 3, 20_000
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(k + 1, vocab, dtype=torch.float64, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(k, vocab, dtype=torch.float64, generator=g) * 3.0, -1)
    first, second = [], []
    for _ in range(n):
        x = (
            [int(torch.argmax(q[i])) for i in range(k)]
            if deterministic
            else [int(torch.multinomial(q[i], 1, generator=g)) for i in range(k)]
        )
        verdict = rule(p, x, None if deterministic else q, g)
        first.append(verdict.tokens[0])
        if verdict.n_accepted >= 1:
            second.append(verdict.tokens[1])
    assert len(second) > 1000
    return tv(distribution(first, vocab), p[0]), tv(distribution(second, vocab), p[1])


@pytest.mark.parametrize("deterministic", [False, True])
def test_sampling_output_follows_target(deterministic: bool):
    """TV bounds 0.02 and 0.03 at n = 20000 (the sampling error here is about 0.006)."""
    first, second = output_errors(verify_sampling, deterministic)
    assert first < 0.02
    assert second < 0.03


def keep_every_token(p, tokens, q, generator) -> Verdict:
    """A lossy rule: every drafted token is kept, so the output follows q, not p."""
    return Verdict([*tokens, sample(p[len(tokens)], generator)], len(tokens))


def test_a_lossy_rule_fails_the_same_bounds():
    first, second = output_errors(keep_every_token, deterministic=False)
    assert first > 0.02 and second > 0.03
