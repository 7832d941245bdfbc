"""The decode loop: prefill, then (policy budget -> drafters -> policy trim -> target forward
-> verify -> commit)*, one code path for a chain and a token tree, and for one request or
many in flight (their drafts scored in one target pass).

``Engine.step_all()`` is the only implementation of a step; ``stream()`` runs it on a batch
of one and ``generate()`` drains that, so streaming and non-streaming, one request and many,
cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch

from adaspec.backends.base import Backend, SlotRows, forward_slots, slot_of
from adaspec.budget import Budget
from adaspec.config import GenerationConfig
from adaspec.draft import Draft
from adaspec.drafters.base import Drafter, DrafterSet
from adaspec.errors import ConfigError
from adaspec.policies.base import Policy
from adaspec.request import prompt_ids, request_config
from adaspec.state import DecodeState, Sharing
from adaspec.stats import ArmCost, GenerationStats, RowsSeen, StepOutcome
from adaspec.tree import ROOT, TokenTree
from adaspec.unverified import UnverifiedDrafts
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
    """One request in flight: its decoding state, its own policy and drafters (opened on
    the engine's, sharing what they learn across requests) and its slot of the target.
    Iterating runs it alone, a batch of one; a scheduler steps many through
    ``Engine.step_all``. ``token_ids``, ``finish_reason`` and ``stats`` fill in as it goes."""

    def __init__(
        self, engine: Engine, prompt: Sequence[int], config: GenerationConfig, slot: int = 0
    ) -> None:
        engine.check_request(prompt, config)
        self.engine = engine
        self.prompt = list(prompt)
        self.config = config
        self.slot = slot
        self.token_ids: list[int] = []
        self.finish_reason = "length"
        self.stats = GenerationStats(prompt_tokens=len(self.prompt))
        self.cached_tokens = 0  # leading prompt tokens the slot held already: not prefilled
        self.done = False
        self.running: Running | None = None  # set by Engine.begin, cleared by Engine.end
        self.state: DecodeState | None = None  # kept after the end: the committed text
        self._started = 0.0

    def __iter__(self) -> Iterator[list[int]]:
        self.engine.begin(self)
        try:
            while not self.done:
                yield self.engine.step_all([self])[0]
        finally:
            self.engine.end(self)

    def result(self) -> GenerationResult:
        """The whole result: runs the loop to its end."""
        for _ in self:
            pass
        return self.finished()

    def finished(self) -> GenerationResult:
        """The result of what has run so far (a cancelled request's partial answer)."""
        tokenizer = self.engine.target.tokenizer
        text = tokenizer.decode(self.token_ids) if tokenizer is not None else ""
        return GenerationResult(self.token_ids, text, self.finish_reason, self.stats)


@dataclass(frozen=True)
class Running:
    """What a request holds from its begin to its end: its decoding state and its own
    policy and drafters."""

    state: DecodeState
    policy: Policy
    drafters: DrafterSet
    unverified: UnverifiedDrafts = field(default_factory=UnverifiedDrafts)

    def parts(self) -> tuple[DecodeState, Policy, DrafterSet]:
        return self.state, self.policy, self.drafters


@dataclass
class _Planned:
    """One request's share of a step before the target pass: the draft to verify."""

    draft: Draft  # what is verified (a prefix of what was proposed)
    proposal: Draft  # what the drafters proposed
    prescored: bool  # the prefill scored the first row: the pass runs only the draft
    draft_s: float
    asked: tuple[ArmCost, ...]  # each drafter asked, timed apart
    unverified: tuple[Draft, ...]  # a plain step's unsampled proposals (none when drafting)


class Engine:
    """A target backend, a drafter (or a set of them the policy chooses among, as auto's
    arms) and a policy. Each request gets its own opened copies of the drafter and policy
    and a slot of the target; ``step_all`` advances several requests by one step each,
    their drafts scored in one target pass.

    ``clock`` times the steps that policies learn costs from: the wall clock, or a
    scripted one where a test or a replay decides what each forward costs."""

    def __init__(
        self,
        target: Backend,
        drafter: Drafter | DrafterSet,
        policy: Policy,
        clock: Callable[[], float] = perf_counter,
        record_rows: int = 0,
        draft: Backend | None = None,
    ) -> None:
        self.target = target
        self.draft = draft  # the draft model its drafters run, if any (what a warm-up warms)
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

    def begin(self, gen: Generation, cached: int = 0) -> None:
        """Prefill the prompt in the request's slot, keeping the row that scores the first
        new token, and open the request's drafters and policy. ``cached``: leading prompt
        tokens the slot's cache holds already (a multi-turn chat's history), not prefilled
        again."""
        gen._started = self.clock()
        config, target = gen.config, slot_of(self.target, gen.slot)
        state = DecodeState(
            list(gen.prompt),
            len(gen.prompt),
            config.sampling,
            _rng(config.seed),
            max_new_tokens=config.max_new_tokens,
            slot=gen.slot,
        )
        cached = min(cached, len(gen.prompt) - 1)  # the last token is fed: its row is needed
        if cached > 0:
            target.rollback(cached)
        else:
            target.reset()
        state.next_logits = target.score_prompt(state.tokens[cached:])
        gen.state, gen.cached_tokens = state, cached
        drafters = self.drafters.open(state)
        gen.running = Running(state, self.policy.open(state, drafters.shares), drafters)
        gen.stats.prefill_s = self.clock() - gen._started

    def end(self, gen: Generation) -> None:
        """The request is over (finished or cancelled): its slot's cache keeps only its
        committed text, and the policy keeps what the request taught it."""
        gen.done, running, gen.running = True, gen.running, None
        if running is None:
            return  # never began (its slot untouched), or ended already
        gen.stats.wall_s = self.clock() - gen._started
        target = slot_of(self.target, gen.slot)
        target.rollback(min(target.length, len(running.state.tokens)))
        running.policy.finish()

    def step_all(self, gens: Sequence[Generation]) -> list[list[int]]:
        """One step of every request: each drafts, one target pass scores every draft
        (``Backend.forward_slots``), each verifies and commits its own. Returns each
        request's new token ids; a request that ended is marked ``done``."""
        plans = self._plan_all(gens)
        started = self.clock()
        rows = self._score(gens, plans)
        scored_s = self.clock() - started
        batch_rows = sum(_fed_rows(plan) for plan in plans)
        return [
            self._finish(gen, plan, logits, scored_s, batch_rows)
            for gen, plan, logits in zip(gens, plans, rows, strict=True)
        ]

    def _plan_all(self, gens: Sequence[Generation]) -> list[_Planned]:
        """Each request's plan in turn, each told what the others add to the pass: the rows
        of those planned already, and for those still to plan, and the tokens of all, what
        their recent steps had. Known before any of its own tokens is drawn, so a budget
        may depend on it (docs/design.md, rule 1)."""
        recent = [_recent_step(gen) for gen in gens]
        tokens = sum(yielded for _, yielded in recent)
        plans: list[_Planned] = []
        for i, gen in enumerate(gens):
            rows = sum(_fed_rows(plan) for plan in plans)
            rows += round(sum(fed for fed, _ in recent[i + 1 :]))
            sharing = Sharing(rows, tokens - recent[i][1], len(gens) - 1)
            _running(gen).state.sharing = sharing
            plans.append(self._plan(gen))
        return plans

    def _plan(self, gen: Generation) -> _Planned:
        """The request's budget, its drafters' proposal and what of it to verify."""
        state, policy, drafters = _running(gen).parts()
        room = gen.config.max_new_tokens - state.generated - 1  # the step adds one itself
        room = room if gen.config.speculate else 0  # no draft: a plain step
        budget = policy.budget(state).capped(room)
        t0 = self.clock()
        asked = ask_drafters(drafters.arms, state, budget, policy, self.clock)
        proposal = asked.draft
        draft = proposal.prefix(self._to_verify(policy, proposal))
        prescored = state.next_logits is not None
        unverified = () if draft.tokens else (*asked.passed_over, proposal)
        return _Planned(draft, proposal, prescored, self.clock() - t0, asked.costs, unverified)

    def _to_verify(self, policy: Policy, proposal: Draft) -> int:
        """How many drafted nodes to verify. Lossless sampling needs the choice to verify
        a node to depend only on what was known before it was drawn (docs/design.md, rule
        1): a sampled draft was shaped as it was drawn and is verified whole; the policy may
        look ahead only over a draft that is a function of the committed text (a lookup's, a
        recycled tree, any greedy one), whose tokens hold no chance."""
        return len(proposal.tokens) if proposal.sampled else policy.trim(proposal)

    def _score(self, gens: Sequence[Generation], plans: Sequence[_Planned]) -> list[torch.Tensor]:
        """Target rows for each request's last committed token and nodes: [n + 1, vocab].
        A request's first step takes the last token's row from the prefill and runs only
        its draft (nothing, when there is none)."""
        fed: list[SlotRows] = []
        for gen, plan in zip(gens, plans, strict=True):
            tree = plan.draft.tree
            if not plan.prescored:
                rooted = tree.rooted(_running(gen).state.tokens[-1])
                fed.append((gen.slot, rooted.tokens, rooted.parents))
            elif tree:
                fed.append((gen.slot, tree.tokens, tree.parents))
        scored = iter(forward_slots(self.target, fed) if fed else [])
        rows = []
        for gen, plan in zip(gens, plans, strict=True):
            state = _running(gen).state
            first, state.next_logits = state.next_logits, None
            if first is None:
                rows.append(next(scored))
            elif plan.draft.tree:
                rows.append(torch.cat([first[None], next(scored)]))
            else:
                rows.append(first[None])
        return rows

    def _finish(
        self,
        gen: Generation,
        plan: _Planned,
        logits: torch.Tensor,  # [n + 1, vocab]: row 0 the root's, i + 1 node i's
        scored_s: float,
        batch_rows: int,
    ) -> list[int]:
        """Verify the request's draft, commit the accepted path, learn from the step."""
        state, policy, drafters = _running(gen).parts()
        started, draft, tree = self.clock(), plan.draft, plan.draft.tree
        verdict = verify_tree(logits, tree, draft.probs, state.sampling, state.generator)
        self._commit(gen.slot, plan.prescored, bool(tree), verdict.path)
        new = _cut_after_eos(verdict.tokens, self.target.eos_token_ids, gen.config.stop_at_eos)
        rows = _rows_seen(
            logits,
            state.tokens,
            tree,
            max(drafters.row_top_k, self.record_rows),
        )
        start = len(state.tokens)
        state.tokens.extend(new)
        running = _running(gen)
        running.unverified.wait(plan.unverified, start)
        outcome = StepOutcome(
            drafted=len(tree),
            accepted=len(verdict.path),
            emitted=len(new),
            draft_s=plan.draft_s,
            verify_s=scored_s + self.clock() - started,
            drafter=plan.proposal.source,
            proposed=len(plan.proposal.tokens),
            confidences=tuple(draft.confidences),
            prescored=plan.prescored,
            target_top=_target_top(logits, rows, verdict.path[-1] + 1 if verdict.path else 0),
            parents=None if draft.parents is None else tuple(draft.parents),
            path=tuple(verdict.path),
            rows=rows,
            batch_rows=batch_rows,
            asked=plan.asked,
            unverified=running.unverified.judge(state.tokens),
        )
        policy.observe(outcome)
        drafters.observe(outcome)
        gen.stats.record(outcome)
        gen.token_ids.extend(new)
        if gen.config.stop_at_eos and new[-1] in self.target.eos_token_ids:
            gen.finish_reason, gen.done = "stop", True
        elif state.generated >= gen.config.max_new_tokens:
            gen.done = True
        return new

    def _commit(self, slot: int, prescored: bool, drafted: bool, path: list[int]) -> None:
        """Keep the accepted nodes in the slot's cache (and the fed root, when it was
        fed: the cache holds every committed token but the last)."""
        target = slot_of(self.target, slot)
        if not prescored:
            target.commit([0, *(node + 1 for node in path)])
        elif drafted:
            target.commit(path)


def _running(gen: Generation) -> Running:
    if gen.running is None:
        raise RuntimeError("Engine.begin(generation) must run before its steps")
    return gen.running


RECENT_STEPS = 8  # a request's steps that say what its next one will add to a pass


def _recent_step(gen: Generation) -> tuple[float, float]:
    """Rows a request fed its recent passes and tokens they yielded, per step (one and
    one before it has stepped)."""
    steps = gen.stats.steps[-RECENT_STEPS:]
    if not steps:
        return 1.0, 1.0
    rows = sum(step.drafted + 1 for step in steps) / len(steps)
    return rows, sum(step.emitted for step in steps) / len(steps)


def _fed_rows(plan: _Planned) -> int:
    """Rows this request adds to the step's target pass."""
    return len(plan.draft.tokens) + (0 if plan.prescored else 1)


@dataclass(frozen=True)
class Asked:
    """The draft kept from the drafters asked in a step, what asking each one cost, and
    the drafts not kept (judged as the text goes on where the step verifies none)."""

    draft: Draft
    costs: tuple[ArmCost, ...] = ()
    passed_over: tuple[Draft, ...] = ()


def ask_drafters(
    arms: Mapping[str, Drafter],
    state: DecodeState,
    budget: Budget,
    policy: Policy,
    clock: Callable[[], float] = perf_counter,
) -> Asked:
    """The drafters the budget names, asked in order, each under its own budget; one whose
    promise is below what the draft in hand is worth (a plain step's, before any) is not
    asked, and the draft the policy values most is kept. A sampled draft is taken as it
    comes: choosing it by its own tokens' worth would bias the output (docs/design.md,
    rule 1). Each arm is timed on its own, so its cost is learnt apart from the others'."""
    best, in_hand, costs, passed_over = Draft(), budget.plain, [], []
    for name in budget.ask:
        arm = budget.for_drafter(name)
        if arm.max_tokens == 0 or (arm.promise is not None and arm.promise < in_hand):
            continue
        started = clock()
        draft = arms[name].propose(state, arm)
        costs.append(ArmCost(name, clock() - started, len(draft.tokens)))
        if draft.sampled:
            return Asked(draft, tuple(costs), (*passed_over, best))
        worth = policy.value(draft)
        if worth >= in_hand:
            passed_over.append(best)
            best, in_hand = draft, worth
        else:
            passed_over.append(draft)
    return Asked(best, tuple(costs), tuple(passed_over))


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
