"""Training the acceptance head: run the pair on prompts, label every position of the
target's greedy output by whether the draft model's greedy token there equals the target's
(exactly the event "the target accepts this draft token" in greedy verification), fit the
head on the draft's hidden states, and measure its calibration on held-out prompts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from adaspec.backends.base import Backend
from adaspec.bench.questions import Question
from adaspec.config import GenerationConfig
from adaspec.engine import Engine
from adaspec.head import AcceptanceHead, features


@dataclass
class Samples:
    x: torch.Tensor  # [n, width] head features
    y: torch.Tensor  # [n] 1.0 where the target accepts the draft's token
    group: torch.Tensor  # [n] which prompt each sample came from (splits keep prompts whole)

    def where(self, mask: torch.Tensor) -> Samples:
        return Samples(self.x[mask], self.y[mask], self.group[mask])


def collect(
    target: Engine,
    draft: Backend,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    on_prompt: Callable[[int], None] = lambda i: None,
) -> Samples:
    xs, ys, groups = [], [], []
    for i, prompt in enumerate(prompts):
        output = target.generate(prompt, GenerationConfig(max_new_tokens=max_new_tokens))
        text = [*prompt, *output.token_ids]
        draft.reset()
        draft.prefill(text[: len(prompt) - 1])
        logits, hidden = draft.forward_hidden(text[len(prompt) - 1 : -1])  # row t -> text[t+1]
        wanted = torch.tensor(text[len(prompt) :])
        xs.append(features(hidden, logits))
        ys.append((logits.argmax(dim=-1) == wanted).float())
        groups.append(torch.full((len(wanted),), i))
        on_prompt(i + 1)
    return Samples(torch.cat(xs), torch.cat(ys), torch.cat(groups))


def split(samples: Samples, held_out: float = 0.25, seed: int = 0) -> tuple[Samples, Samples]:
    """Train and held-out samples, split by prompt (positions of one text are correlated)."""
    prompts = samples.group.unique()
    order = prompts[torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, round(len(prompts) * held_out))
    test = torch.isin(samples.group, order[:n_test])
    return samples.where(~test), samples.where(test)


def train(samples: Samples, steps: int = 400, seed: int = 0) -> AcceptanceHead:
    """Full-batch Adam on the log loss (the loss that rewards calibrated probabilities),
    keeping the weights that did best on a fifth of the prompts set aside: a few thousand
    tokens against hundreds of hidden dimensions overfit quickly."""
    torch.manual_seed(seed)
    several = len(samples.group.unique()) > 1
    fit, check = split(samples, held_out=0.2, seed=seed + 1) if several else (samples, samples)
    head = AcceptanceHead(samples.x.shape[1])
    head.standardise_with(fit.x)
    optimizer = torch.optim.Adam(
        [
            {"params": head.confidence.parameters(), "weight_decay": 0.0},
            {"params": head.net.parameters(), "weight_decay": 1e-2},
        ],
        lr=3e-3,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def check_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(head.eval()(check.x), check.y))

    best_loss, best_state = check_loss(), copy.deepcopy(head.state_dict())  # the draft's own
    for _ in range(steps):
        head.train()
        optimizer.zero_grad()
        loss_fn(head(fit.x), fit.y).backward()
        optimizer.step()
        loss = check_loss()
        if loss < best_loss:
            best_loss, best_state = loss, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return head.eval()


@dataclass
class Reliability:
    bins: list[dict]  # per bin of predicted probability: range, count, mean predicted, observed
    brier: float  # mean squared error of the predicted probabilities
    brier_base_rate: float  # the same for always predicting the training acceptance rate
    brier_draft_top: float  # the same for the draft's own top probability
    n: int
    acceptance_rate: float


@torch.inference_mode()
def reliability(
    head: AcceptanceHead, test: Samples, base_rate: float, n_bins: int = 10
) -> Reliability:
    predicted = torch.sigmoid(head(test.x))
    draft_top = test.x[:, -2]  # the features' top-probability column
    bins = []
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        mask = (predicted >= low) & ((predicted < high) if b < n_bins - 1 else predicted <= high)
        if mask.any():
            bins.append(
                {
                    "range": [low, high],
                    "n": int(mask.sum()),
                    "predicted": round(float(predicted[mask].mean()), 4),
                    "observed": round(float(test.y[mask].mean()), 4),
                }
            )
    return Reliability(
        bins=bins,
        brier=round(float(((predicted - test.y) ** 2).mean()), 4),
        brier_base_rate=round(float(((base_rate - test.y) ** 2).mean()), 4),
        brier_draft_top=round(float(((draft_top - test.y) ** 2).mean()), 4),
        n=len(test.y),
        acceptance_rate=round(float(test.y.mean()), 4),
    )


def training_questions(
    questions: Sequence[Question], held_out_per_category: int, n: int
) -> list[Question]:
    """Up to n questions, taken in turn from each category, skipping the first
    ``held_out_per_category`` of each: the ones ``adaspec bench`` measures by default."""
    by_category: dict[str, list[Question]] = {}
    for question in questions:
        by_category.setdefault(question.category, []).append(question)
    pools = [pool[held_out_per_category:] for pool in by_category.values()]
    chosen: list[Question] = []
    for i in range(max((len(p) for p in pools), default=0)):
        chosen += [pool[i] for pool in pools if i < len(pool)]
    return chosen[:n]
