"""A draft model growing a dynamic token tree (DySpec, Xiong et al., 2024).

Level by level: each frontier node gets as many children as its row offers tokens whose
path probability (the product of draft probabilities down from the root) clears a floor,
the likeliest frontier nodes first, until the budget's nodes or depth run out or the
policy's stop rule says the best path is not worth another level. One draft forward per
level scores the whole tree so far (tree attention), so drafting costs one pass per level,
not one per node.

Under sampling the children are drawn without replacement from the parent's row (each
child's q is the row renormalised over the tokens not drawn yet), and how many are drawn
is decided from what was known before drawing them: the parent's path probability and its
row. A sampled tree is therefore shaped while it is drafted and verified whole
(docs/design.md, rule 1); under greedy decoding the children are the row's top tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from adaspec.backends.base import Backend, check_same_vocabulary
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, missing_draft_model
from adaspec.drafters.model import ModelDrafter, fit_width
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.sampling import probabilities, sample
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome
from adaspec.tree import ROOT, TokenTree


@dataclass
class _Growing:
    """The tree as it is drawn."""

    tokens: list[int] = field(default_factory=list)  # [n]
    parents: list[int] = field(default_factory=list)  # [n]
    rows: list[torch.Tensor] = field(default_factory=list)  # [n] q each node was drawn from
    confidences: list[float] = field(default_factory=list)  # [n] draft probability of it
    path: list[float] = field(default_factory=list)  # [n] draft probability of its root path

    def add(self, parent: int, token: int, q: torch.Tensor, confidence: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.rows.append(q)
        self.confidences.append(confidence)
        self.path.append(confidence * (self.path[parent] if parent != ROOT else 1.0))
        return len(self.tokens) - 1

    def path_confidences(self, node: int) -> list[float]:
        path = TokenTree.of(self.tokens, self.parents).path(node)
        return [self.confidences[i] for i in path]


@DRAFTERS.register("model-tree")
class ModelTreeDrafter:
    needs_draft_model: ClassVar[bool] = True
    uses_draft_model: ClassVar[bool] = True
    row_top_k: ClassVar[int] = 0

    def __init__(self, model: ModelDrafter, width: int = 4, floor: float = 0.05) -> None:
        self.model = model  # the draft model and its cache, which the chain drafter may share
        self.width = width  # most children per node
        self.floor = floor  # least path probability a node is drawn at

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> ModelTreeDrafter:
        if draft is None:
            raise missing_draft_model("model-tree")
        check_same_vocabulary(target, draft)
        return cls(ModelDrafter(draft, target.vocab_size, window=options.draft_window))

    def open(self, state: DecodeState, model: ModelDrafter | None = None) -> ModelTreeDrafter:
        """A copy on the request's draft cache: ``model``, where a chain drafter of the same
        request already holds it (auto's two model arms share one cache)."""
        request = copy.copy(self)
        request.model = model if model is not None else self.model.open(state)
        return request

    def start(self, state: DecodeState) -> None:
        self.model.start(state)

    def observe(self, outcome: StepOutcome) -> None:
        pass  # the cache is re-synchronised from the committed tokens in propose()

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        if budget.depth_limit == 0 or budget.max_tokens == 0:
            return Draft(source="model-tree")
        backend, width = self.model.backend, self.model.vocab_size
        frontier = [(ROOT, self.model.catch_up(state.tokens))]  # (node, draft logits [vocab])
        base = backend.length
        tree = _Growing()
        for depth in range(1, budget.depth_limit + 1):
            new = self._expand(tree, frontier, state, budget)
            if not new or len(tree.tokens) >= budget.max_tokens or depth == budget.depth_limit:
                break
            best = max(new, key=lambda node: tree.path[node])
            if budget.enough(tree.path_confidences(best)):
                break
            backend.rollback(base)
            logits = backend.forward(tree.tokens, tree.parents)  # [n, vocab]
            frontier = [(node, fit_width(logits[node], width)) for node in new]
        backend.rollback(base)
        sampled = tree.rows and not state.sampling.greedy
        probs = torch.stack(tree.rows) if sampled else None  # [n, vocab]
        return Draft(tree.tokens, probs, tree.confidences, "model-tree", tuple(tree.parents))

    def _expand(
        self,
        tree: _Growing,
        frontier: list[tuple[int, torch.Tensor]],
        state: DecodeState,
        budget: Budget,
    ) -> list[int]:
        """One level: children for the frontier nodes, likeliest parent first. How many a
        node gets is fixed before any is drawn (its path probability and its row)."""
        floor = max(self.floor, budget.min_confidence)
        new: list[int] = []
        order = sorted(frontier, key=lambda f: -(tree.path[f[0]] if f[0] != ROOT else 1.0))
        for node, logits in order:
            above = tree.path[node] if node != ROOT else 1.0
            sure = torch.softmax(logits.float(), -1)  # [vocab] what confidences are read from
            q = probabilities(logits[None], state.sampling)[0]  # [vocab], warped like p
            ranked = (q if not state.sampling.greedy else sure).topk(self.width)
            count = int((above * ranked.values >= floor).sum())
            count = min(count, budget.max_tokens - len(tree.tokens))
            if node == ROOT:
                count = max(count, 1)  # the root always gets its likeliest child
            for j in range(count):
                if state.sampling.greedy:
                    token = int(ranked.indices[j])
                    new.append(tree.add(node, token, q, float(sure[token])))
                    continue
                token = sample(q, state.generator)
                new.append(tree.add(node, token, q, float(q[token])))
                q = q.clone()
                q[token] = 0.0
                q = q / q.sum()  # the next sibling is drawn without replacement
        return new
