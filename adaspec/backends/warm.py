"""One forward of each kind a decoding step can make, run before anything is timed or
served, so no request pays a first call's costs (graphs and buffers allocated, kernels
chosen, caches laid out).

Which kinds: chains of 1 to WARM_CHAIN positions (the sizes a plan tries first), one tree
of WARM_TREE nodes (the largest a policy grows), on the target and on the draft model,
and, where the target holds several slots, one pass shared by all of them. A forward of a
size once warmed costs no more the first time than later ones on either backend
(docs/serving.md, "Warm-up"), so one of each kind is enough.
"""

from __future__ import annotations

from adaspec.backends.base import Backend, SlotRows, slot_of
from adaspec.profile import plain_tokens
from adaspec.tree import ROOT

WARM_CHAIN = 8
WARM_TREE = 64
PROMPT_TOKENS = 16


def warm_paths(target: Backend, draft: Backend | None = None) -> None:
    """Run each kind of forward once on each model; every cache is left empty."""
    for model in (target, draft):
        if model is not None:
            _warm_model(model)
    if target.slots > 1:
        _warm_shared_pass(target)


def _warm_model(model: Backend) -> None:
    prompt = plain_tokens(model.vocab_size, PROMPT_TOKENS + WARM_TREE)
    model.reset()
    model.prefill(prompt[:PROMPT_TOKENS])
    rows = prompt[PROMPT_TOKENS:]
    for size in range(1, WARM_CHAIN + 1):
        model.forward(rows[:size])
        model.rollback(PROMPT_TOKENS)
    model.forward(rows, binary_tree(WARM_TREE))
    model.reset()


def _warm_shared_pass(target: Backend) -> None:
    prompt = plain_tokens(target.vocab_size, PROMPT_TOKENS + 2)
    slots = [slot_of(target, i) for i in range(target.slots)]
    for slot in slots:
        slot.reset()
        slot.prefill(prompt[:PROMPT_TOKENS])
    rows: list[SlotRows] = [(i, prompt[PROMPT_TOKENS:], None) for i in range(len(slots))]
    target.forward_slots(rows)
    for slot in slots:
        slot.reset()


def binary_tree(nodes: int) -> list[int]:
    """Parents of a tree of ``nodes`` nodes, two children each: trees a policy grows
    branch like this near the root."""
    return [ROOT] + [(i - 1) // 2 for i in range(1, nodes)]
