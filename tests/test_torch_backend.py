"""KV-cache rollback: after any accept/reject history the cache equals a fresh prefill."""

from __future__ import annotations

import random

import pytest
import torch

from adaspec.backends import torch_hf
from adaspec.backends.torch_hf import _dtype
from tests.tiny import backend, tiny_model


def cache_tensors(b) -> list[torch.Tensor]:
    return [t for layer in b._cache.layers for t in (layer.keys, layer.values)]


def test_rollback_matches_fresh_prefill():
    rng = random.Random(0)
    b = backend(tiny_model(seed=0))
    committed = [rng.randrange(96) for _ in range(5)]
    b.prefill(committed)
    for _ in range(25):
        draft = [rng.randrange(96) for _ in range(rng.randint(1, 6))]
        b.forward(draft)  # provisional positions
        keep = rng.randint(0, len(draft))  # how many the "target" accepted
        committed += draft[:keep]
        b.rollback(len(committed))
        assert b.length == len(committed)
    fresh = backend(b.model)
    fresh.prefill(committed)
    for got, want in zip(cache_tensors(b), cache_tensors(fresh), strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-10)
    probe = [rng.randrange(96) for _ in range(3)]
    assert torch.allclose(b.forward(probe), fresh.forward(probe), atol=1e-10)


def test_forward_rows_score_each_prefix():
    b = backend(tiny_model(seed=2))
    tokens = [3, 1, 4, 1, 5]
    rows = b.forward(tokens)
    assert rows.shape == (5, 96)
    full = b.model(torch.tensor([tokens])).logits[0]
    assert torch.allclose(rows, full, atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_weights_default_to_float32_on_every_device(device):
    """bf16 GPU kernels round a k-token forward differently from k one-token steps, which
    would let greedy speculation differ from plain decoding; fp32 is the exact default."""
    assert _dtype(None, device) is torch.float32
    assert _dtype("bfloat16", device) is torch.bfloat16


@pytest.mark.parametrize("has_bf16", [True, False])
def test_a_draft_model_runs_in_bf16_only_on_a_cpu_that_computes_it(monkeypatch, has_bf16):
    """A draft's rounding never reaches the output, its cost does: bf16 where the CPU has
    bf16 instructions (faster there), fp32 where torch would emulate it (slower), fp32 on a
    GPU, and a dtype the user names always wins."""
    monkeypatch.setattr(torch_hf, "cpu_has_bf16", lambda: has_bf16)
    assert _dtype(None, "cpu", drafting=True) is (torch.bfloat16 if has_bf16 else torch.float32)
    assert _dtype(None, "cpu") is torch.float32  # the target: exact verification
    assert _dtype(None, "cuda", drafting=True) is torch.float32
    assert _dtype("float32", "cpu", drafting=True) is torch.float32


def full_recompute(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def test_a_tree_forward_scores_each_node_after_its_own_path():
    """Row i of a tree forward equals the row a plain model gives after the committed text
    and node i's root path; after commit(path) the cache scores the next token as a fresh
    prefill of the text and the path does, and keeps no other node."""
    from adaspec.tree import ROOT, TokenTree

    b = backend(tiny_model(seed=0))
    text = [5, 17, 42, 8]
    tree = TokenTree((11, 12, 13, 14, 15), (ROOT, 0, 0, 1, ROOT))  # two branches under 11
    b.prefill(text)
    rows = b.forward(tree.tokens, tree.parents)
    for node in range(len(tree)):
        want = full_recompute(b.model, [*text, *tree.path_tokens(node)])
        assert torch.allclose(rows[node], want, atol=1e-9), node
    path = tree.path(3)  # 11 -> 12 -> 14
    b.commit(path)
    assert b.length == len(text) + len(path)
    committed = [*text, *tree.path_tokens(3)]
    next_row = b.forward([7])[0]
    assert torch.allclose(next_row, full_recompute(b.model, [*committed, 7]), atol=1e-9)
    fresh = backend(b.model)
    fresh.prefill([*committed, 7])
    for got, want in zip(cache_tensors(b), cache_tensors(fresh), strict=True):
        assert torch.allclose(got, want, atol=1e-9)


def test_slots_scored_together_equal_each_slot_alone():
    """Three slots of different lengths, a chain, a tree and one token, in one flat
    forward: each slot's rows and, after its commit, its cache equal the same steps taken
    slot by slot on a backend of one slot each."""
    model = tiny_model(seed=0)
    together = torch_hf.TorchBackend(model, slots=3)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23]]
    steps = [
        ([30, 31, 32], None, [0, 1]),
        ([40, 41, 42, 43], (-1, 0, -1, 2), [2, 3]),
        ([50], None, []),
    ]
    apart = [backend(model) for _ in prompts]
    for slot, prompt in enumerate(prompts):
        together.slot(slot).prefill(prompt)
        apart[slot].prefill(prompt)
    rows = together.forward_slots([(slot, t, p) for slot, (t, p, _) in enumerate(steps)])
    for slot, (tokens, parents, path) in enumerate(steps):
        alone = apart[slot].forward(tokens, parents)
        assert torch.allclose(rows[slot], alone, atol=1e-10)
        together.slot(slot).commit(path)
        apart[slot].commit(path)
        got, want = cache_tensors(together.slot(slot)), cache_tensors(apart[slot])
        assert all(torch.allclose(g, w, atol=1e-10) for g, w in zip(got, want, strict=True))


def test_masked_forwards_read_grouped_heads_in_place_with_sdpas_results():
    """On a CPU the backend attends through gqa_sdpa (no copy of each key and value head
    group under a mask); a tree forward's rows are sdpa's."""
    from adaspec.backends.gqa_attention import NAME
    from adaspec.tree import ROOT

    text, tokens, parents = [5, 17, 42, 8, 3], [11, 12, 13, 14], (ROOT, 0, 0, 1)
    b = backend(tiny_model(seed=0))
    assert b.model.config._attn_implementation == NAME
    assert b.model.config.num_key_value_heads < b.model.config.num_attention_heads
    b.prefill(text)
    ours = b.forward(tokens, parents)
    b.rollback(len(text))
    b.model.set_attn_implementation("sdpa")
    theirs = b.forward(tokens, parents)
    assert torch.allclose(ours, theirs, atol=1e-6)
