"""The acceptance head: collecting labels, training, calibration, save/load, and drafting
with it stays lossless."""

from __future__ import annotations

import json

import pytest
import torch

from adaspec.config import GenerationConfig
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.none import NoDrafter
from adaspec.engine import Engine
from adaspec.head import AcceptanceHead, features, head_path
from adaspec.head_training import collect, reliability, split, train
from adaspec.policies.fixed import FixedPolicy
from adaspec.policies.goodput import GoodputPolicy
from tests.test_cli import run as invoke
from tests.tiny import ar_tokens, backend, perturbed, tiny_model

PROMPTS = [[(7 * i + 3 * j) % 90 + 1 for j in range(6 + i % 4)] for i in range(12)]


@pytest.fixture(scope="module")
def pair():
    target = tiny_model()
    return backend(target), backend(perturbed(target, 0.08))


@pytest.fixture(scope="module")
def samples(pair):
    target, draft = pair
    return collect(Engine(target, NoDrafter(), FixedPolicy(1)), draft, PROMPTS, 24)


def test_labels_are_greedy_agreement(pair, samples):
    """Each label says whether the draft's argmax equals the target's next greedy token."""
    target, draft = pair
    prompt = PROMPTS[0]
    expected = ar_tokens(target, prompt, 24)
    draft.reset()
    logits = draft.forward([*prompt, *expected[:-1]])[len(prompt) - 1 :]
    agree = (logits.argmax(-1) == torch.tensor(expected)).float()
    assert torch.equal(samples.y[samples.group == 0], agree)
    assert 0.1 < float(samples.y.mean()) < 0.95  # a partly agreeing pair: both labels occur


def test_head_learns_and_reports_calibration(samples):
    fit, held_out = split(samples, held_out=0.25)
    assert set(fit.group.tolist()).isdisjoint(held_out.group.tolist())
    head = train(fit, steps=300)
    report = reliability(head, held_out, base_rate=float(fit.y.mean()))
    assert report.n == len(held_out.y)
    assert sum(row["n"] for row in report.bins) == report.n
    assert report.brier < report.brier_base_rate  # better than knowing only the average


def test_save_and_load_round_trip(samples, tmp_path):
    head = train(samples, steps=20)
    path = head.save(tmp_path / "h.pt", {"brier": 0.1})
    again = AcceptanceHead.load(path)
    x = samples.x[:10]
    assert torch.equal(head(x), again(x))
    assert torch.load(path, weights_only=True)["brier"] == 0.1


def test_head_path_sits_beside_the_draft(tmp_path):
    assert head_path("/m/draft.gguf").name == "draft.acceptance-head.pt"
    assert head_path(tmp_path) == tmp_path / "acceptance-head.pt"


def test_an_untrained_head_is_the_drafts_own_top_probability(samples):
    """Training starts from the draft's confidence; the hidden state only corrects it."""
    head = AcceptanceHead(samples.x.shape[1])
    head.standardise_with(samples.x)
    predicted = torch.sigmoid(head(samples.x))
    assert torch.allclose(predicted, samples.x[:, -2].clamp(1e-6, 1 - 1e-6), atol=1e-5)


def test_features_shape():
    x = features(torch.randn(3, 8), torch.randn(3, 50))
    assert x.shape == (3, 10)
    assert torch.all((x[:, -2] > 0) & (x[:, -2] <= 1))


@pytest.mark.parametrize("policy", [lambda: FixedPolicy(5), lambda: GoodputPolicy(6)])
def test_drafting_with_a_head_matches_autoregressive(pair, samples, policy):
    target, draft = pair
    head = train(samples, steps=100)
    drafter = ModelDrafter(draft, target.vocab_size, head, max_rejection=0.9)
    engine = Engine(target, drafter, policy())
    for prompt in PROMPTS[:4]:
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=30))
        assert result.token_ids == ar_tokens(target, prompt, 30)
    assert all(0.0 <= c <= 1.0 for s in result.stats.steps for c in s.confidences)


def test_broken_head_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.acceptance-head.pt"
    path.write_text("not a head")
    with pytest.raises(Exception, match="retrain with `adaspec train-head`"):
        AcceptanceHead.load(path)


def test_train_head_cli(model_dir, draft_dir, tmp_path):
    data = tmp_path / "q.jsonl"
    rows = [
        {"question_id": i, "category": c, "turns": [f"The quick brown fox {i} jumps over"]}
        for i, c in enumerate(["coding", "qa", "coding", "qa", "coding", "qa"])
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "head.pt"
    result = invoke(
        "train-head", "--target", str(model_dir), "--draft", str(draft_dir), "--data", str(data),
        "--prompts", "4", "--max-new-tokens", "8", "--steps", "10", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Brier score" in result.output and out.exists()
    assert AcceptanceHead.load(out).width > 2
    bad = invoke("train-head", "--target", str(model_dir), "--prompts", "1")
    assert bad.exit_code == 1 and "--prompts must be >= 4" in bad.output
