"""The Backend protocol: the only way the engine and the drafters touch a model.

The cache discipline is explicit: ``forward`` appends positions (a chain, or a token
tree's nodes), ``commit(path)`` keeps the accepted ones, ``rollback(length)`` drops every
position at or past ``length``. A backend never has to know about speculation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from adaspec.errors import ModelError
from adaspec.registry import Registry


@runtime_checkable
class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        """Token ids of raw text, with the special tokens the model expects (e.g. BOS)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens (EOS, chat markers) left out."""
        ...

    def apply_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, formatted by the model's own template, ready for a reply."""
        ...

    def vocabulary(self) -> list[str]:
        """Token string of each id; two models can share drafts only if these are equal."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str  # registry name, e.g. "torch"
    label: str  # what the user loaded (path or model name), for messages and reports
    tokenizer: Tokenizer | None  # None for bare models built in tests
    threads: int  # CPU threads it computes with (part of a cost profile's key)
    # A prompt prefilled in pieces of at least this many tokens caches the same keys and
    # values however it is split, so a cached prompt prefix can be reused exactly as long
    # as as many tokens are left to prefill; None: a split changes the rounding.
    prefill_invariant_from: int | None

    @property
    def vocab_size(self) -> int:
        """Width of a logits row."""
        ...

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights a forward reads: before a draft model has been timed, its share
        of the target's is the best guess of what a drafted token costs beside a step."""
        ...

    @property
    def context_length(self) -> int: ...

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def length(self) -> int:
        """Positions currently held in the KV cache."""
        ...

    def reset(self) -> None:
        """Empty the KV cache (a new request)."""
        ...

    def prefill(self, tokens: Sequence[int]) -> None:
        """Append tokens to the cache without returning logits (prompt processing)."""
        ...

    def score_prompt(self, tokens: Sequence[int]) -> torch.Tensor:
        """``prefill`` that also returns the row [vocab] scoring the token after the last
        one, as plain decoding does: the first step then needs no forward of its own. The
        row is the caller's (a later forward does not overwrite it)."""
        ...

    def forward(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        """Append tokens to the cache; row i of the result [k, vocab] scores the token
        that follows tokens[: i + 1]. With ``parents`` ([k], tree.ROOT for a node under the
        cached text) the tokens are a tree's nodes, and row i scores what follows node i
        and its ancestors only; ``commit`` then keeps one root path."""
        ...

    @property
    def slots(self) -> int:
        """How many KV caches it holds: requests it can serve at once."""
        ...

    def slot(self, index: int) -> Backend:
        """The same model on cache ``index``: a full Backend whose cache is that slot's
        (the object itself is slot 0); the same object each time it is asked for."""
        ...

    def forward_slots(self, rows: Sequence[SlotRows]) -> list[torch.Tensor]:
        """``forward`` on several slots at once, in one pass where the backend can score
        them so exactly as one slot at a time: [k_i, vocab] per entry, in order."""
        ...

    def commit(self, path: Sequence[int]) -> None:
        """After a forward: keep the cached text and the nodes of ``path`` (node indices of
        a root path, from the first level down) at consecutive positions; drop the rest."""
        ...

    def forward_hidden(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` plus the final hidden state [k, hidden] each row was scored from:
        what an acceptance head reads."""
        ...

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached positions, drop the rest."""
        ...


BACKENDS: Registry[Backend] = Registry("backend")
# One slot's share of a batched forward: (slot, tokens, parents), as ``forward`` takes them.
SlotRows = tuple[int, Sequence[int], Sequence[int] | None]


def check_same_vocabulary(target: Backend, draft: Backend) -> None:
    """Refuse a draft whose token ids mean something else than the target's."""
    if target.tokenizer is not None and draft.tokenizer is not None:
        same = target.tokenizer.vocabulary() == draft.tokenizer.vocabulary()
    else:
        same = target.vocab_size == draft.vocab_size
    if not same:
        raise ModelError(
            f"draft model {draft.label!r} has a different vocabulary from target "
            f"{target.label!r}; use a draft from the same model family, or --drafter ngram"
        )


def slot_of(backend: Backend, index: int) -> Backend:
    """A backend's view on cache ``index``: slot 0 is the backend itself, so anything with
    one cache (a test's table, a replay) serves one request at a time as it is."""
    return backend if index == 0 else backend.slot(index)


def forward_slots(backend: Backend, rows: Sequence[SlotRows]) -> list[torch.Tensor]:
    """One target pass over every slot's rows; a batch of one is that slot's forward."""
    if len(rows) == 1:
        slot, tokens, parents = rows[0]
        return [slot_of(backend, slot).forward(tokens, parents)]
    return backend.forward_slots(rows)
