"""The acceptance head (SpecDec++): from the draft model's hidden state, the probability
that the target accepts the token the draft proposes there.

The draft model's own top probability is a poor stand-in for that: it measures how sure
the draft is, not whether the target agrees. A small network trained on (hidden state,
accepted?) pairs from running the pair learns the latter. It reads the final hidden state
plus the draft's top probability and entropy, standardised with the training data's
statistics, and is saved beside the draft model so that loading the pair finds it.
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
    def __init__(self, width: int, hidden_units: int = 16) -> None:
        super().__init__()
        self.width = width
        self.hidden_units = hidden_units
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width, hidden_units), torch.nn.GELU(), torch.nn.Linear(hidden_units, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of acceptance for features x [k, width]."""
        return self.net((x - self.mean) / self.std).squeeze(-1)

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
