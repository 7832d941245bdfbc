"""The decode loop: prefill, then (policy budget -> drafters -> policy trim -> target forward
-> verify -> commit)*, one code path for a chain and a token tree.

``Engine.stream()`` is the only implementation of the loop; ``generate()`` drains it, so the
streaming and non-streaming paths cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.config import GenerationConfig
from adaspec.draft import Draft
from adaspec.drafters.base import Drafter, DrafterSet
from adaspec.errors import ConfigError
from adaspec.policies.base import Policy
from adaspec.request import prompt_ids, request_config
from adaspec.state import DecodeState
from adaspec.stats import GenerationStats, RowsSeen, StepOutcome
from adaspec.tree import ROOT, TokenTree
from adaspec.verify import verify_tree


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids only, EOS included when it ended the text
    text: str
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens)
    stats: GenerationStats = field(default_factory=GenerationStats)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "stats": self.stats.summary(),
        }


class Generation:
    """One request in flight. Iterating runs the loop and yields each step's new token ids;
    ``token_ids``, ``finish_reason`` and ``stats`` fill in as it goes."""

    def __init__(self, engine: Engine, prompt: Sequence[int], config: GenerationConfig) -> None:
        engine.check_request(prompt, config)
        self.engine = engine
        self.prompt = list(prompt)
        self.config = config
        self.token_ids: list[int] = []
        self.finish_reason = "length"
        self.stats = GenerationStats(prompt_tokens=len(self.prompt))

    def __iter__(self) -> Iterator[list[int]]:
        clock = self.engine.clock
        started = clock()
        try:
            yield from self._run()
        finally:
            self.stats.wall_s = clock() - started

    def _run(self) -> Iterator[list[int]]:
        engine, config = self.engine, self.config
        state = DecodeState(
            list(self.prompt),
            len(self.prompt),
            config.sampling,
            _rng(config.seed),
            max_new_tokens=config.max_new_tokens,
        )
        started = engine.clock()
        engine.start(state)
        self.stats.prefill_s = engine.clock() - started
        while state.generated < config.max_new_tokens:
            new, outcome = engine.step(state, config)
            self.stats.record(outcome)
            self.token_ids.extend(new)
            yield new
            if config.stop_at_eos and new[-1] in engine.target.eos_token_ids:
                self.finish_reason = "stop"
                return

    def result(self) -> GenerationResult:
        for _ in self:
            pass
        tokenizer = self.engine.target.tokenizer
        text = tokenizer.decode(self.token_ids) if tokenizer is not None else ""
        return GenerationResult(self.token_ids, text, self.finish_reason, self.stats)


class Engine:
    """A target backend, a drafter (or a set of them the policy chooses among, as auto's
    arms) and a policy; serves one request at a time.

    ``clock`` times the steps that policies learn costs from: the wall clock, or a
    scripted one where a test or a replay decides what each forward costs."""

    def __init__(
        self,
        target: Backend,
        drafter: Drafter | DrafterSet,
        policy: Policy,
        clock: Callable[[], float] = perf_counter,
        record_rows: int = 0,
    ) -> None:
        self.target = target
        self.drafter = drafter
        self.drafters = DrafterSet.of(drafter)
        self.policy = policy
        self.clock = clock
        # Each step's rows' top-k kept in its outcome even where the drafter learns nothing
        # from them: a bench's baseline records them, so a replay can feed row-learning
        # drafters (recycling, aded) the target's runners-up too. Costs a top-k per step.
        self.record_rows = record_rows

    def stream(
        self,
        prompt: str | Sequence[int],
        config: GenerationConfig | None = None,
        *,
        chat: bool = False,
        **options: Any,
    ) -> Generation:
        """A request to iterate: each step's new token ids. ``prompt`` is text (formatted as
        a chat turn with ``chat=True``) or token ids; ``options`` are HF-style keywords
        (max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos) over ``config``."""
        ids = prompt_ids(self.target.tokenizer, prompt, chat)
        return Generation(self, ids, request_config(config, options))

    def generate(
        self,
        prompt: str | Sequence[int],
        config: GenerationConfig | None = None,
        *,
        chat: bool = False,
        **options: Any,
    ) -> GenerationResult:
        """``stream`` drained: the whole result, its text and statistics."""
        return self.stream(prompt, config, chat=chat, **options).result()

    def check_request(self, prompt: Sequence[int], config: GenerationConfig) -> None:
        if not prompt:
            raise ConfigError("the prompt is empty; give some text to continue")
        context = self.target.context_length
        if len(prompt) + config.max_new_tokens > context:
            raise ConfigError(
                f"prompt ({len(prompt)} tokens) plus max-new-tokens ({config.max_new_tokens}) "
                f"exceeds the model's context of {context} tokens; "
                "shorten the prompt or lower --max-new-tokens"
            )

    def start(self, state: DecodeState) -> None:
        """Prefill the prompt, keeping the row that scores the first new token."""
        self.target.reset()
        state.next_logits = self.target.score_prompt(state.tokens)
        self.drafters.start(state)
        self.policy.start(state, self.drafters.shares)

    def step(self, state: DecodeState, config: GenerationConfig) -> tuple[list[int], StepOutcome]:
        """One target pass: draft a tree (a chain is one), verify it, commit the accepted
        path; returns the tokens it adds."""
        room = config.max_new_tokens - state.generated - 1  # the step adds one token itself
        budget = self.policy.budget(state).capped(room)
        t0 = self.clock()
        proposal = ask_drafters(self.drafters.arms, state, budget, self.policy)
        draft = proposal.prefix(self._to_verify(proposal))
        t1 = self.clock()
        prescored = state.next_logits is not None
        tree = draft.tree
        logits = self._score(state, tree)  # [n + 1, vocab]: row 0 the root's, i + 1 node i's
        verdict = verify_tree(logits, tree, draft.probs, state.sampling, state.generator)
        self._commit(prescored, bool(tree), verdict.path)
        t2 = self.clock()
        new = _cut_after_eos(verdict.tokens, self.target.eos_token_ids, config.stop_at_eos)
        rows = _rows_seen(
            logits, state.tokens, tree, max(self.drafters.row_top_k, self.record_rows)
        )
        state.tokens.extend(new)
        outcome = StepOutcome(
            drafted=len(tree),
            accepted=len(verdict.path),
            emitted=len(new),
            draft_s=t1 - t0,
            verify_s=t2 - t1,
            drafter=proposal.source,
            proposed=len(proposal.tokens),
            confidences=tuple(draft.confidences),
            prescored=prescored,
            target_top=_target_top(logits, rows, verdict.path[-1] + 1 if verdict.path else 0),
            parents=None if draft.parents is None else tuple(draft.parents),
            path=tuple(verdict.path),
            rows=rows,
        )
        self.policy.observe(outcome)
        self.drafters.observe(outcome)
        return new, outcome

    def _to_verify(self, proposal: Draft) -> int:
        """How many drafted nodes to verify. Lossless sampling needs the choice to verify
        a node to depend only on what was known before it was drawn (docs/methods.md): a
        sampled draft was shaped as it was drawn and is verified whole; the policy may look
        ahead only over a draft that is a function of the committed text (a lookup's, a
        recycled tree, any greedy one), whose tokens hold no chance."""
        return len(proposal.tokens) if proposal.sampled else self.policy.trim(proposal)

    def _score(self, state: DecodeState, tree: TokenTree) -> torch.Tensor:
        """Target rows for the last committed token and each node: [n + 1, vocab]. The first
        step takes the last token's row from the prefill and runs only the draft (nothing,
        when there is none)."""
        first, state.next_logits = state.next_logits, None
        if first is None:
            fed = tree.rooted(state.tokens[-1])
            return self.target.forward(fed.tokens, fed.parents)
        if not tree:
            return first[None]
        return torch.cat([first[None], self.target.forward(tree.tokens, tree.parents)])

    def _commit(self, prescored: bool, drafted: bool, path: list[int]) -> None:
        """Keep the accepted nodes in the target's cache (and the fed root, when it was
        fed: the cache holds every committed token but the last)."""
        if not prescored:
            self.target.commit([0, *(node + 1 for node in path)])
        elif drafted:
            self.target.commit(path)


def ask_drafters(
    arms: Mapping[str, Drafter], state: DecodeState, budget: Budget, policy: Policy
) -> Draft:
    """The drafters the budget names, asked in order, each under its own budget; one whose
    promise is below what the draft in hand is worth (a plain step's, before any) is not
    asked, and the draft the policy values most is kept. A sampled draft is taken as it
    comes: choosing it by its own tokens' worth would bias the output (DESIGN.md rule 1)."""
    best, in_hand = Draft(), budget.plain
    for name in budget.ask:
        arm = budget.for_drafter(name)
        if arm.max_tokens == 0 or (arm.promise is not None and arm.promise < in_hand):
            continue
        draft = arms[name].propose(state, arm)
        if draft.sampled:
            return draft
        worth = policy.value(draft)
        if worth >= in_hand:
            best, in_hand = draft, worth
    return best


def _rows_seen(logits: torch.Tensor, tokens: list[int], tree: TokenTree, k: int) -> RowsSeen | None:
    """The verified rows' k likeliest next tokens and their probabilities (``logits``:
    [n + 1, vocab], after the committed ``tokens`` and the tree's nodes), keyed by the two
    tokens each row follows; None when the drafter learns nothing from them (k = 0)."""
    if k == 0:
        return None
    last = tokens[-1]
    fed = [last, *tree.tokens]  # [n + 1] the token each row scores the next of
    before = [tokens[-2] if len(tokens) > 1 else last]  # [n + 1] the token before each fed
    before += [last if parent == ROOT else tree.tokens[parent] for parent in tree.parents]
    rows = logits.float()
    top = rows.topk(min(k, rows.shape[-1]), dim=-1)  # values, indices: [n + 1, k]
    probs = torch.exp(top.values - torch.logsumexp(rows, -1, keepdim=True))  # [n + 1, k]
    ids = tuple(map(tuple, top.indices.tolist()))
    return RowsSeen(tuple(before), tuple(fed), ids, tuple(map(tuple, probs.tolist())))


def _target_top(logits: torch.Tensor, rows: RowsSeen | None, row: int) -> float:
    """How sure the target was of the token it chose itself (from row ``row`` of
    ``logits``: [n + 1, vocab]): the goodput policy reads from it how likely a draft is to
    agree before paying for one. Read off the row's top-k where they were kept, since each
    pass over a vocabulary-wide row is a visible share of a CPU step (docs/benchmarks.md);
    else one row's max - logsumexp, not a softmax over every row verified."""
    if rows is not None:
        return rows.top_probs[row][0]
    top = logits[row].float()
    return float(torch.exp(top.max() - torch.logsumexp(top, -1)))


def _cut_after_eos(tokens: list[int], eos: frozenset[int], stop_at_eos: bool) -> list[int]:
    if stop_at_eos:
        for i, token in enumerate(tokens):
            if token in eos:
                return tokens[: i + 1]
    return tokens


def _rng(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else random.randrange(2**63))
    return generator
