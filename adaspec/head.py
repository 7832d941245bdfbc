"""The acceptance head (SpecDec++): from the draft model's hidden state, the probability
that the target accepts the token the draft proposes there.

The draft model's own top probability is a poor stand-in for that: it measures how sure
the draft is, not whether the target agrees. A small network trained on (hidden state,
accepted?) pairs from running the pair learns the latter, as a correction of the draft's
top probability and entropy by its final hidden state. It is saved beside the draft model
so that loading the pair finds it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from adaspec.errors import ModelError

SUFFIX = ".acceptance-head.pt"


def head_path(draft_label: str | Path) -> Path:
    """Beside the draft model: ``x.gguf`` -> ``x.acceptance-head.pt``; a model folder gets
    ``acceptance-head.pt`` inside it."""
    path = Path(draft_label)
    if path.is_dir():
        return path / SUFFIX.lstrip(".")
    return path.with_name(path.name.removesuffix(".gguf") + SUFFIX)


def features(hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[k, hidden + 2]: the hidden state, the draft's top probability and its entropy."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [k, vocab]
    top = log_probs.max(dim=-1).values.exp()
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return torch.cat([hidden.float(), top[:, None], entropy[:, None]], dim=-1)


class AcceptanceHead(torch.nn.Module):
    """A correction on top of the draft's own confidence: the logit of acceptance is an
    affine map of the draft's top probability (as a logit) and entropy, plus a small MLP of
    the standardised hidden state whose output layer starts at zero. Training therefore
    starts from the draft's confidence, a good baseline, and the hidden state moves the
    estimate only as far as held-out data says it helps: with a few hundred tokens, a head
    on the hidden state alone overfits and ends up worse than the draft's own probability."""

    def __init__(self, width: int, hidden_units: int = 16) -> None:
        super().__init__()
        self.width = width
        self.hidden_units = hidden_units
        self.register_buffer("mean", torch.zeros(width - 2))
        self.register_buffer("std", torch.ones(width - 2))
        self.confidence = torch.nn.Linear(2, 1)  # [logit(top), entropy] -> logit
        with torch.no_grad():
            self.confidence.weight.copy_(torch.tensor([[1.0, 0.0]]))
            self.confidence.bias.zero_()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width - 2, hidden_units),
            torch.nn.GELU(),
            torch.nn.Linear(hidden_units, 1),
        )
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def standardise_with(self, x: torch.Tensor) -> None:
        """Take the hidden features' mean and spread from training features x [n, width]."""
        self.mean.copy_(x[:, :-2].mean(dim=0))
        self.std.copy_(x[:, :-2].std(dim=0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of acceptance for features x [k, width] (hidden, top probability, entropy)."""
        top = torch.logit(x[:, -2].clamp(1e-6, 1 - 1e-6))  # [k]
        base = self.confidence(torch.stack([top, x[:, -1]], dim=-1)).squeeze(-1)  # [k]
        return base + self.net((x[:, :-2] - self.mean) / self.std).squeeze(-1)

    @torch.inference_mode()
    def probability(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """[k] P(accepted) for draft rows with these hidden states and logits."""
        return torch.sigmoid(self(features(hidden, logits)))

    def save(self, path: Path, report: dict) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in self.state_dict().items()}
        torch.save(
            {"width": self.width, "hidden_units": self.hidden_units, "state": state, **report},
            path,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> AcceptanceHead:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            head = cls(saved["width"], saved["hidden_units"])
            head.load_state_dict(saved["state"])
        except (OSError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise ModelError(
                f"cannot read the acceptance head {path}: {error}; "
                "delete it or retrain with `adaspec train-head`"
            ) from None
        return head.eval()
