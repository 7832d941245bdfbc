"""Per-step records and the per-request summary.

``mean_accepted`` follows Spec-Bench's "#Mean Accepted Tokens": tokens produced per target
forward pass, so plain autoregressive decoding scores exactly 1.00.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from adaspec.tree import ROOT

INFORMATIVE = 1e-3  # a row whose likeliest token is below this probability is flat


@dataclass(frozen=True)
class RowsSeen:
    """The verify pass's rows as a model-free drafter learns from them: what the target
    scored after each token fed (Token Recycling's adjacency, ADED's trigrams). Rows of
    rejected nodes count too: each is the target's view after its own context."""

    before: tuple[int, ...]  # [rows] the token before each fed one (itself at the start)
    fed: tuple[int, ...]  # [rows] the token each row scores the successor of
    top_ids: tuple[tuple[int, ...], ...]  # [rows, k] the target's k likeliest next tokens
    top_probs: tuple[tuple[float, ...], ...]  # [rows, k] their probabilities

    def informative(self) -> RowsSeen:
        """The rows whose likeliest token has at least INFORMATIVE probability: a flat row
        (a replay's, after a rejected node) says nothing worth learning."""
        keep = [i for i, probs in enumerate(self.top_probs) if probs and probs[0] >= INFORMATIVE]
        if len(keep) == len(self.fed):
            return self
        fields = (self.before, self.fed, self.top_ids, self.top_probs)
        return RowsSeen(*(tuple(column[i] for i in keep) for column in fields))


@dataclass(frozen=True)
class ArmCost:
    """What asking one drafter cost in a step: each arm asked is priced by its own time,
    not by the step's whole drafting (a lookup kept beside a model arm costs a lookup's)."""

    drafter: str
    seconds: float
    proposed: int  # tokens it proposed


@dataclass(frozen=True)
class Unverified:
    """A draft a plain step left unverified (passed over, or trimmed to nothing), judged
    once the committed text has left it or reached its end (verify.judge_unverified,
    adaspec/unverified.py): evidence of how often the drafter is right that cost no
    target row."""

    drafter: str
    tried: tuple[tuple[float, bool], ...]  # (confidence, matched) of judged nodes with one
    accepted: int  # judged nodes that matched
    judged: int  # nodes a verify would have judged (those whose parent matched)


@dataclass(frozen=True)
class StepOutcome:
    """What one speculative step did; policies and drafters learn from it."""

    drafted: int  # draft tokens sent to the target
    accepted: int  # of those, how many the target kept
    emitted: int  # tokens appended to the output (accepted + 1, fewer at EOS/length)
    draft_s: float
    verify_s: float
    drafter: str = ""  # which drafter proposed the draft ("" when there was none)
    proposed: int = 0  # tokens the drafter produced; the policy verified ``drafted`` of them
    confidences: tuple[float, ...] = ()  # the drafter's estimates for the verified tokens
    prescored: bool = False  # the prefill had scored the first position: it ran ``drafted``
    target_top: float | None = None  # the target's top probability where its own token came
    parents: tuple[int, ...] | None = None  # [drafted] the verified tree (None: a chain)
    path: tuple[int, ...] = ()  # accepted nodes, from the first level down
    rows: RowsSeen | None = None  # what the verify pass saw, for drafters that learn from it
    # Rows of the whole target pass this step shared with other requests' (its own
    # ``positions`` when it ran alone): its verify time is the whole pass's.
    batch_rows: int | None = None
    asked: tuple[ArmCost, ...] = ()  # each drafter asked this step; () where untimed apart
    unverified: tuple[Unverified, ...] = ()  # earlier plain steps' drafts, judged by now

    def arm_costs(self) -> tuple[ArmCost, ...]:
        """Each asked drafter's cost: ``asked``, or the whole drafting time charged to the
        kept drafter where the arms were not timed apart."""
        if self.asked or not self.drafter:
            return self.asked
        return (ArmCost(self.drafter, self.draft_s, self.proposed),)

    @property
    def positions(self) -> int:
        """Positions the target's forward of this step ran (0: the prefill did its work)."""
        return self.drafted if self.prescored else self.drafted + 1

    def judged(self) -> list[tuple[int, bool]]:
        """(node, accepted) of each verified node whose parent was accepted: the nodes the
        target actually judged, each accepted or not given its parent."""
        if self.parents is None:
            return [(i, i < self.accepted) for i in range(min(self.accepted + 1, self.drafted))]
        judged, on_path = {ROOT, *self.path}, set(self.path)
        return [(i, i in on_path) for i, parent in enumerate(self.parents) if parent in judged]

    def tried(self) -> list[tuple[float, bool]]:
        """``judged`` with each node's confidence, where the drafter gave one."""
        known = len(self.confidences)
        return [(self.confidences[i], ok) for i, ok in self.judged() if i < known]


@dataclass
class GenerationStats:
    """Running totals for one request; ``summary()`` is what the CLI and bench report."""

    prompt_tokens: int = 0
    prefill_s: float = 0.0
    wall_s: float = 0.0
    steps: list[StepOutcome] = field(default_factory=list)

    def record(self, outcome: StepOutcome) -> None:
        self.steps.append(outcome)

    @property
    def new_tokens(self) -> int:
        return sum(s.emitted for s in self.steps)

    @property
    def target_forwards(self) -> int:
        return len(self.steps)

    def summary(self) -> dict[str, float | int]:
        new_tokens = self.new_tokens
        drafted = sum(s.drafted for s in self.steps)
        accepted = sum(s.accepted for s in self.steps)
        forwards = self.target_forwards
        return {
            "new_tokens": new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "target_forwards": forwards,
            "drafted": drafted,
            "accepted": accepted,
            "mean_accepted": round(new_tokens / forwards, 4) if forwards else 0.0,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
            "draft_s": round(sum(s.draft_s for s in self.steps), 4),
            "verify_s": round(sum(s.verify_s for s in self.steps), 4),
            "prefill_s": round(self.prefill_s, 4),
            "wall_s": round(self.wall_s, 4),
            "tokens_per_s": round(new_tokens / self.wall_s, 3) if self.wall_s > 0 else 0.0,
        }

    def to_dict(self) -> dict:
        steps = [asdict(replace(s, rows=None)) for s in self.steps]  # rows: bulky, internal
        return {"summary": self.summary(), "steps": steps}
