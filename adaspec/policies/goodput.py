"""Goodput: speculate exactly as much as pays on this machine, for this text, now.

SmartSpec's rule, applied twice per step. Before drafting, the draft length k in 0..k_max
maximises expected new tokens per unit time, E[k] / (draft cost of k + verify cost of k+1
positions), with E[k] from the drafter's online acceptance rate. After drafting, the tokens
are in hand with their confidences (calibrated online into acceptance probabilities), so the
prefix to verify is chosen by the same ratio on the actual tokens. k = 0 is a plain
autoregressive step: where verifying costs nearly as much per token as decoding (a CPU),
speculation happens only when it is nearly certain to be accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.policies.acceptance import Acceptance, Calibration
from adaspec.policies.base import POLICIES, PolicyDefaults, check_k
from adaspec.policies.estimates import DraftCost, Ewma, VerifyCost
from adaspec.policies.rates import best_length, best_prefix, best_prefix_and_rate, expected_tokens
from adaspec.profile import CostProfile, machine_profile, planning_profile
from adaspec.state import ALONE, DecodeState
from adaspec.stats import ArmCost, StepOutcome, Unverified

if TYPE_CHECKING:
    from adaspec.draft import Draft

FREE_DRAFT = 0.05  # a drafter costing under this share of a one-token forward is "free"
PROBE = 2  # tokens a drafter not seen yet in this request may draft: learns its cost
MAX_NODES = 64  # the largest tree a free drafter grows, where verifying its rows pays
PREFILL_ROWS = 256  # a prefill's cost per token is a forward's of this many, per row
HORIZON = 32  # tokens a request is assumed to generate where no limit nor earlier one says
# One-token forwards timed before any drafting: speculation is judged against a plain step,
# which must be measured, not extrapolated (on a CPU, verifying 2 positions costs much more
# than 1, so a line through 2 and 3 overprices a plain step), and the first may be cold.
BASELINE = 2
# A drafter that pays per token (a draft model) is asked only where it promises this many
# times the rate of what is in hand. Its promise rests on estimates (an acceptance prior,
# costs timed under noise), and asking the arm that looks best selects the one whose
# estimate errs most upward (the optimizer's curse): on a CPU, where a draft model at best
# gains a few percent on prose, a bet that looks 5% better loses as often as it wins, and
# pays its set-up either way. A free drafter needs no margin: trim() judges its tokens.
DOUBT = 1.1
# Beside other requests, one that verified no draft last step starts again only where a
# draft beats its plain step as if that yielded this many tokens more (5% of its own token,
# not of the whole pass's: one request's draft moves a large batch's rate by little); one
# drafting goes on while any draft beats it. Load changes step by step (requests join and
# leave), and a decision at the threshold would flip with it (vLLM #49548: a batch-size
# switch without hysteresis lost throughput).
SWITCH = 0.05


@POLICIES.register("goodput")
class GoodputPolicy(PolicyDefaults):
    uses_cost_profile = True

    def __init__(self, k: int = 8, profile: CostProfile | None = None) -> None:
        self.k_max = check_k(k)
        self.verify = VerifyCost(profile)
        self.acceptance = Acceptance()
        self.calibration = Calibration()
        self.draft_ms: dict[str, DraftCost] = {}  # per drafter: ms per proposed token
        self.set_up: set[str] = set()  # drafters that have drafted in this request
        self.setup_ms: dict[str, Ewma] = {}  # per drafter: set-up ms per token of context
        self.generated = 0  # tokens of this request so far
        self.limit: int | None = None  # this request's max_new_tokens
        self.request_tokens = Ewma()  # tokens a request has generated
        self.prescored = False  # the step under way has its first row from the prefill
        self.arms: dict[str, float] = {}  # drafter -> guessed cost share, cheapest first
        self.sharing = ALONE  # the others in the step being planned
        self.drafting = False  # the last step verified a draft

    @classmethod
    def create(cls, k: int | None, target: Backend) -> GoodputPolicy:
        """With the cost profile the target's forwards are charged by (a replay's) or the
        one saved on this machine (``adaspec profile``), where there is one."""
        profile = planning_profile(target)
        return cls(profile=profile) if k is None else cls(k, profile)

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float, k_max: int = 8) -> bool:
        """Whether drafts of some length, every token accepted, each costing ``share`` of a
        one-token forward, would beat plain steps on this machine's timed costs (once timed,
        cached): where not, no acceptance could make the model pay."""
        profile = machine_profile(target)
        context = profile.contexts[0]
        step = profile.cost_ms(1, context)

        def rate(k: int) -> float:
            return (k + 1) / (profile.cost_ms(k + 1, context) + share * step * k)

        return max(rate(k) for k in range(1, k_max + 1)) > 1.0 / step

    def start(self, state: DecodeState, arms: Mapping[str, float]) -> None:
        """The estimators become this request's copies (sharing what they learn across
        requests); the draft costs, set-up rates and request lengths stay shared."""
        self.arms = dict(arms)
        self.verify = self.verify.for_request(len(state.tokens))
        self.acceptance = self.acceptance.for_request()
        self.calibration = self.calibration.for_request()
        self.set_up = set()
        self.generated, self.limit = 0, state.max_new_tokens
        self.sharing, self.drafting = ALONE, False

    def finish(self) -> None:
        if self.generated:
            self.request_tokens.add(self.generated)

    def budget(self, state: DecodeState) -> Budget:
        """Every arm with its plan, cheapest first; a plain step until the baseline is
        timed. Promises are for choosing: with one arm, its plan's length alone says
        whether to draft, and one not timed yet probes (it was the user's choice). Beside
        other requests, rates are the whole step's (SmartSpec's goodput): this request's
        rows are priced at what they add to the others' pass."""
        self.prescored = state.next_logits is not None
        self.sharing = state.sharing
        if self._baseline_untimed():
            return Budget(0)  # a plain step: the baseline is timed first
        plain = (1.0 + self._others() + self._margin()) / self._step_ms(1)
        per = {name: self._plan(name, share, plain) for name, share in self.arms.items()}
        if len(per) == 1:
            per = {name: replace(plan, promise=None) for name, plan in per.items()}
        return Budget(PROBE, plain=plain, ask=tuple(per), per_drafter=per)

    def _baseline_untimed(self) -> bool:
        """Whether a plain step must be timed before drafting: alone, one-token forwards
        (BASELINE of them); beside others, any pass once. A shared pass's size changes
        step by step as requests join, leave and draft, so waiting for each size to be
        timed twice kept most steps of a busy server plain; sizes not timed follow the
        profile's shape, scaled by the nearest one timed (VerifyCost)."""
        if self.sharing.requests:
            return not self.verify.seen
        return self.verify.timings(1) < BASELINE

    def trim(self, draft: Draft) -> int:
        spent = self._draft_ms(draft.source) * len(draft.tokens)
        probs, others, margin = self._probabilities(draft), self._others(), self._margin()
        return best_prefix(probs, self._step_ms, spent, draft.parents, others, margin)

    def value(self, draft: Draft) -> float:
        """Expected tokens per millisecond of verifying what trim() would keep of a draft
        in hand (its drafting is spent: a plain step is worth 1 / a one-token step)."""
        probs, others, margin = self._probabilities(draft), self._others(), self._margin()
        return best_prefix_and_rate(probs, self._step_ms, 0.0, draft.parents, others, margin)[1]

    def observe(self, outcome: StepOutcome) -> None:
        self.generated += outcome.emitted
        self.drafting = outcome.drafted > 0
        before, context = self.verify.context, self.verify.context + outcome.emitted
        # A pass shared with other requests times a forward over all its rows.
        rows = outcome.positions if outcome.batch_rows is None else outcome.batch_rows
        self.verify.observe(rows, outcome.verify_s * 1000, context)
        self.acceptance.observe_target(outcome.target_top)
        self.acceptance.idle_except(outcome.drafter)
        self.calibration.idle_except(outcome.drafter)
        costs = outcome.arm_costs()
        asked = {cost.drafter for cost in costs}
        for name, cost in self.draft_ms.items():
            if name not in asked:
                cost.idle()
        for cost in costs:
            self._observe_cost(cost, before)
        for unverified in self._unverified(outcome):
            self.calibration.observe_unverified(unverified.drafter, unverified.tried)
        if not outcome.drafter:
            return
        trimmed = outcome.proposed > outcome.drafted and not self._free(outcome.drafter)
        judged = len(outcome.judged()) + (trimmed and outcome.accepted == outcome.drafted)
        self.acceptance.observe_tested(outcome.drafter, judged, outcome.accepted)
        self.calibration.observe_tried(outcome.drafter, outcome.tried())

    def _unverified(self, outcome: StepOutcome) -> list[Unverified]:
        """Drafts of free drafters that plain steps left unverified, judged now that the
        text they guessed is committed (adaspec/unverified.py): one that trim() never let
        verify still learns how often it is right. A drafter that pays per token learns
        from what it is verified on: a draft of its trimmed to nothing counts as a
        rejection (observe)."""
        return [u for u in outcome.unverified if u.judged and self._free(u.drafter)]

    def _observe_cost(self, cost: ArmCost, context: int) -> None:
        """Learn what a token of this drafter costs; an arm's first step here paid its
        set-up (a draft model's prefill of the context), learnt apart per context token."""
        name, ms = cost.drafter, cost.seconds * 1000
        if cost.proposed and name in self.set_up:
            self.draft_ms.setdefault(name, DraftCost()).add(ms / cost.proposed)
        elif cost.proposed and name in self.draft_ms:
            excess = ms - self._draft_ms(name) * cost.proposed
            self.setup_ms.setdefault(name, Ewma()).add(max(0.0, excess) / max(context, 1))
        self.set_up.add(name)

    def _plan(self, drafter: str, share: float, plain: float) -> Budget:
        """The budget for one drafter, with the rate the policy expects of it. A free one
        drafts all it may (trim() judges a lookup's nodes); one that pays per token drafts
        the best length, stopping early where its tokens look doubtful (``min_path``)."""
        if drafter not in self.draft_ms:
            return Budget(PROBE, promise=min(plain, self._promise_untimed(drafter, share)))
        draft_ms, acceptance = self._draft_ms(drafter), self.acceptance.rate(drafter)
        k, promise = self._rate(draft_ms, acceptance, self._setup_share(drafter))
        if self._free(drafter):
            k, nodes, margin = self._k_limit(), self._node_limit(), 1.0
        else:
            nodes, margin = self._nodes_costing(k), DOUBT
        return Budget(
            nodes,
            max_depth=k,
            promise=promise / margin,
            min_path=self._min_path(draft_ms, acceptance, k),
            calibration=self.calibration.points(drafter),
        )

    def _promise_untimed(self, drafter: str, share: float) -> float:
        """Expected tokens per millisecond from a drafter not timed yet, if a drafted token
        costs this share of a one-token forward (a draft model's weights over the target's)
        and is accepted at its prior for this text (how sure the target is of it): a draft
        model that could not pay even so is not worth its set-up (prefilling the context) to
        find out. A fixed prior would ask it on every text or on none: at 0.7, it looked 5%
        better than a plain step on code and prose alike. A free drafter (a lookup) promises
        at least a plain step: trim() verifies none of its tokens where none pay. The plan
        caps it at a plain step: an untimed arm is asked only where nothing better is in
        hand."""
        draft_ms = share * self.verify.ms(1)
        free = self._free_at(draft_ms)
        setup = 0.0 if free else self._setup_guess(share)
        rate = self._rate(draft_ms, self.acceptance.rate(drafter), setup, k_min=0 if free else 1)
        return rate[1] if free else rate[1] / DOUBT

    def _setup_guess(self, share: float) -> float:
        """Each token's share of a draft model's set-up, guessed before it is timed: its
        weights' share of what the target pays per token to prefill this context (a forward
        of PREFILL_ROWS positions), spread as _setup_share spreads a timed one. Without it,
        a long prompt bought a model whose first prefill its answer could not repay."""
        per_token = self.verify.ms(PREFILL_ROWS) / PREFILL_ROWS
        return share * per_token * self.verify.context / self._expected_tokens_left()

    def _min_path(self, draft_ms: float, acceptance: float, k: int) -> tuple[float, ...]:
        """SpecDec++'s early stop, priced, as data. With d tokens drafted, all accepted with
        probability P, drafting m more (each accepted at the drafter's rate a, if all before
        it are) adds P (a + ... + a^m) expected tokens for m more verified rows and m drafted
        tokens; that pays where it beats the rate this plan expects. So the least P worth
        going on from at depth d is the best m's price: a draft the calibration already
        doubts stops before paying a forward for a token unlikely to be reached."""
        cost = [self._step_ms(n) for n in range(1, k + 2)]  # [n - 1]: a step of n rows
        gain = [0.0]  # [m] a + ... + a^m
        for m in range(1, k + 1):
            gain.append(gain[-1] + acceptance**m)
        base = 1.0 + self._others()
        rate = max((base + gain[j]) / (cost[j] + draft_ms * j) for j in range(k + 1))
        floors = [0.0]
        for depth in range(1, k):
            floors.append(
                min(
                    rate * (cost[depth + m] - cost[depth] + draft_ms * m) / max(gain[m], 1e-12)
                    for m in range(1, k - depth + 1)
                )
            )
        return tuple(floors)

    def _nodes_costing(self, k: int) -> int:
        """The most nodes whose verify costs no more than a chain of k does (within 5%): a
        tree drafter's (model-tree's) width where rows come cheap, k where they do not."""
        budget = 1.05 * self._step_ms(k + 1)
        nodes = k
        while nodes < self._node_limit() and self._step_ms(nodes + 2) <= budget:
            nodes += 1
        return nodes

    def _rate(
        self, draft_ms: float, acceptance: float, setup_ms: float, k_min: int = 0
    ) -> tuple[int, float]:
        """The best draft length (at least k_min) and its expected tokens per millisecond,
        a set-up still to pay charged per token (``setup_ms``, which does not change the
        best length)."""
        others = self._others()
        k = best_length(acceptance, self._step_ms, draft_ms, self._k_limit(), k_min, others)
        tokens = expected_tokens(acceptance, k) + others
        per_token = (self._step_ms(k + 1) + draft_ms * k) / tokens + setup_ms
        return k, 1.0 / per_token

    def _free(self, drafter: str) -> bool:
        """Whether a full draft costs this drafter next to nothing (an n-gram lookup): it
        drafts all it may, and what trim() leaves out of it cost nothing."""
        return self._free_at(self._draft_ms(drafter))

    def _free_at(self, draft_ms: float) -> bool:
        return draft_ms * self._k_limit() <= FREE_DRAFT * self.verify.ms(1)

    def _k_limit(self) -> int:
        return min(self.k_max, self._rows_left())

    def _node_limit(self) -> int:
        """The most nodes a free drafter may grow: as many as a forward not yet trusted
        allows (explored_limit), up to MAX_NODES."""
        return min(MAX_NODES, self._rows_left())

    def _rows_left(self) -> int:
        """Draft rows the step's pass may take before its size is beyond what was timed."""
        return max(0, self.verify.explored_limit() - 1 - self.sharing.rows)

    def _others(self) -> float:
        """Tokens the other requests in the step are expected to yield."""
        return self.sharing.tokens

    def _margin(self) -> float:
        """Hysteresis beside other requests (SWITCH); alone, none."""
        return SWITCH if self.sharing.requests and not self.drafting else 0.0

    def _setup_share(self, drafter: str) -> float:
        """Each token's share of what a drafter not yet used in this request pays first (a
        draft model prefills the whole context), spread over the tokens the request has left:
        its limit's, or fewer where requests have ended sooner. Spread over tokens, not
        steps: the steps left shrink as soon as the drafter drafts, so a share per step left
        undercharged it, and a long prompt with a short answer left bought a model whose
        set-up (3.9 s for a RAG prompt on a CPU) the answer could not repay."""
        rate = self.setup_ms.get(drafter)
        if drafter in self.set_up or rate is None or rate.value is None:
            return 0.0
        return rate.value * self.verify.context / self._expected_tokens_left()

    def _expected_tokens_left(self) -> float:
        """Up to the request's limit, or as many as earlier requests generated where
        they ended sooner."""
        typical = self.request_tokens.value
        if typical is None:
            typical = self.limit if self.limit is not None else HORIZON
        elif self.limit is not None:
            typical = min(typical, self.limit)
        return max(1.0, float(typical - self.generated))

    def _probabilities(self, draft: Draft) -> list[float]:
        """Each drafted token's chance of acceptance, as far as verifying may reach."""
        probs = [self.calibration.probability(draft.source, c) for c in draft.confidences]
        probs += [self.acceptance.rate(draft.source)] * (len(draft.tokens) - len(probs))
        return probs[: self._rows_left()]

    def _step_ms(self, n: int) -> float:
        """Milliseconds of a step that scores n positions. When the prefill has scored the
        first (a request's first step), the forward runs only n - 1; the step is still
        charged a one-token forward for that row, so a draft must beat plain decoding's rate
        (1 token per ``ms(1)``) rather than a step that would cost nothing without it."""
        rows = self.sharing.rows + n  # the pass's: the others' rows too
        if not self.prescored:
            return self.verify.ms(rows)
        return self.verify.ms(1) + (self.verify.ms(rows - 1) if rows > 1 else 0.0)

    def _draft_ms(self, drafter: str) -> float:
        estimate = self.draft_ms.get(drafter)
        if estimate is None or estimate.value is None:
            return 0.0
        return estimate.value
