"""A synthetic Backend whose logits are a table lookup on the last two tokens: microseconds
a step, so a distribution test can afford 10^4 samples per configuration, and the exact
target distribution of a few tokens is a product of table rows (enumerable).

Each forward charges a scripted clock, so a cost-aware policy decides as it would on a
machine with that cost curve, not on this process's overhead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from adaspec.bench.replay import ScriptedClock as Clock  # time passes only when charged
from adaspec.config import SamplingParams
from adaspec.sampling import probabilities
from adaspec.tree import ROOT, TokenTree


def gpu_like(n: int) -> float:
    """Milliseconds of a forward over n positions where extra rows are nearly free."""
    return 10.0 + 0.1 * n


class TableBackend:
    """Row for the token after ``..., a, b`` is ``table[a, b]`` (a = b for a one-token
    context). Implements the Backend protocol without a tokenizer."""

    name = "table"
    tokenizer = None
    threads = 1

    def __init__(
        self,
        table: torch.Tensor,  # [vocab, vocab, vocab] logits
        clock: Clock | None = None,
        cost_ms: Callable[[int], float] = gpu_like,
        label: str = "table",
        weight_bytes: int = 1000,
        eos: frozenset[int] = frozenset(),
    ) -> None:
        self.table = table
        self.clock = clock
        self.cost_ms = cost_ms
        self.label = label
        self._weight_bytes = weight_bytes
        self._eos = eos
        self.cache: list[int] = []
        # An early exit after layer l of exit_layers reads the table plus this noise times
        # (1 - l / exit_layers): deeper exits agree with the target more, and cost more.
        self.exit_noise = torch.randn(table.shape, generator=torch.Generator().manual_seed(7))
        self.exit_layers = 4

    @property
    def vocab_size(self) -> int:
        return self.table.shape[-1]

    @property
    def weight_bytes(self) -> int:
        return self._weight_bytes

    @property
    def context_length(self) -> int:
        return 4096

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def length(self) -> int:
        return len(self.cache)

    def reset(self) -> None:
        self.cache = []

    def prefill(self, tokens: Sequence[int]) -> None:
        self.cache.extend(tokens)

    def score_prompt(self, tokens: Sequence[int]) -> torch.Tensor:
        self.prefill(tokens)
        return self.row(self.cache).clone()

    def forward(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        if self.clock is not None:
            self.clock.now += self.cost_ms(len(tokens)) / 1000
        tree = TokenTree.of(tokens, parents)
        self._start, self._tree = len(self.cache), tree
        if not tree:
            return self.table[0, 0, :0]
        # a node's row follows its own token and its parent's (the last committed one
        # above the first level): row() of the node's context, for every node at once
        last = self.cache[-1] if self.cache else None
        before = [
            tree.tokens[parent] if parent != ROOT else (token if last is None else last)
            for token, parent in zip(tree.tokens, tree.parents, strict=True)
        ]
        self.cache.extend(tokens)  # positions held until commit keeps one path
        return self.table[before, list(tree.tokens)]  # [k, vocab]

    def commit(self, path: Sequence[int]) -> None:
        del self.cache[self._start :]
        self.cache.extend(self._tree.tokens[i] for i in path)

    def forward_hidden(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(tokens)
        return logits, logits.float()

    def rollback(self, length: int) -> None:
        del self.cache[length:]

    @contextmanager
    def early_exit(self, layer: int) -> Iterator[Callable[[Sequence[int]], torch.Tensor]]:
        """The early_exit.EarlyExit protocol: a row of the noisier table per call, each
        charged a tenth of a one-token forward per layer's share."""
        share = layer / self.exit_layers

        def run(text: Sequence[int]) -> torch.Tensor:
            if self.clock is not None:
                self.clock.now += share * self.cost_ms(1) / 10_000
            before = text[-2] if len(text) > 1 else text[-1]
            noise = self.exit_noise[before, text[-1]].to(self.table.dtype)
            return self.table[before, text[-1]] + (1.0 - share) * noise

        yield run

    def row(self, context: Sequence[int]) -> torch.Tensor:
        """The logits [vocab] scoring the token after ``context``."""
        return self.table[context[-2] if len(context) > 1 else context[-1], context[-1]]


REPEATING = [0, 1, 2, 3] * 6  # a lookup's matches run as long as any budget


def cyclic_target(clock: Clock) -> TableBackend:
    """A target that continues 0 1 2 3 0 1 ... with certainty."""
    table = torch.full((4, 4, 4), -20.0, dtype=torch.float64)
    for last in range(4):
        table[:, last, (last + 1) % 4] = 20.0
    return TableBackend(table, clock)


def random_table(vocab: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, vocab, vocab, generator=generator, dtype=torch.float64) * scale


def exact_joint(
    target: TableBackend, prompt: Sequence[int], params: SamplingParams, n: int
) -> torch.Tensor:
    """The target's own distribution of its first n tokens after the prompt, warped as
    ``params`` say: [vocab] * n, by enumerating every sequence."""
    vocab = target.vocab_size

    def extend(context: list[int], depth: int) -> torch.Tensor:
        p = probabilities(target.row(context)[None], params)[0].double()  # [vocab]
        if depth == 1:
            return p
        return torch.stack([p[x] * extend([*context, x], depth - 1) for x in range(vocab)])

    return extend(list(prompt), n)


def exact_answers(
    target: TableBackend, prompt: Sequence[int], params: SamplingParams, n: int
) -> torch.Tensor:
    """The target's own distribution of its first n output tokens where an EOS ends the
    answer: [vocab + 1] * n, index ``vocab`` (ENDED) filling every position after the EOS.
    The answers are enumerated, so n stays small (vocab ** n sequences at most)."""
    vocab = target.vocab_size

    def ended(depth: int) -> torch.Tensor:
        out = torch.zeros((vocab + 1,) * depth, dtype=torch.float64)
        out[(vocab,) * depth] = 1.0
        return out

    def extend(context: list[int], depth: int) -> torch.Tensor:
        p = probabilities(target.row(context)[None], params)[0].double()  # [vocab]
        out = torch.zeros((vocab + 1,) * depth, dtype=torch.float64)
        for x in range(vocab):
            if depth == 1:
                out[x] = p[x]
            elif p[x] > 0:
                rest = (
                    ended(depth - 1)
                    if x in target.eos_token_ids
                    else extend([*context, x], depth - 1)
                )
                out[x] = p[x] * rest
        return out

    return extend(list(prompt), n)
