"""Per-step records and the per-request summary.

``mean_accepted`` follows Spec-Bench's "#Mean Accepted Tokens": tokens produced per target
forward pass, so plain autoregressive decoding scores exactly 1.00.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    @property
    def positions(self) -> int:
        """Positions the target's forward of this step ran (0: the prefill did its work)."""
        return self.drafted if self.prescored else self.drafted + 1


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
        return {"summary": self.summary(), "steps": [asdict(s) for s in self.steps]}
