"""Real-model checks on the pulled default pair. Marked `integration`: run them with
`pytest -m integration` after `adaspec models pull` (``make test`` does both)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from adaspec import Generation, GenerationConfig, load, load_backend
from adaspec.api import encode_prompt
from adaspec.backends import BACKENDS
from adaspec.errors import ModelError
from adaspec.models import DEFAULT_TARGET, NAMED_MODELS, model_path

pytestmark = pytest.mark.integration
DRAFT = "qwen2.5-coder-0.5b"
PROMPTS = [
    "Write a Python function that reverses a linked list.",
    "Summarize: speculative decoding drafts tokens cheaply and verifies them in one pass.",
    "def fibonacci(n):",
]
needs_llama = pytest.mark.skipif("llama.cpp" not in BACKENDS.names(), reason="no llama-cpp-python")


@pytest.fixture(scope="module", autouse=True)
def pulled():
    if not model_path(NAMED_MODELS[DRAFT]).is_file():
        pytest.skip("the default pair is not pulled; run `adaspec models pull`")


def same_ids_as_autoregressive(backend: str, drafter: str, policy: str, n: int, **kw) -> None:
    plain = load(DRAFT, drafter="none", backend=backend)
    spec = load(DRAFT, drafter=drafter, policy=policy, backend=backend, **kw)
    for text in PROMPTS[:n]:
        ids = encode_prompt(plain.target.tokenizer, text, chat=not text.startswith("def"))
        config = GenerationConfig(max_new_tokens=32)
        want = plain.generate(ids, config)
        got = spec.generate(ids, config)
        assert got.token_ids == want.token_ids, (drafter, policy, text)
        assert len(want.token_ids) == 32 or want.finish_reason == "stop"
        assert want.text.strip()


def test_torch_ngram_greedy_equals_autoregressive():
    same_ids_as_autoregressive("torch", "ngram", "heuristic", n=2)


def test_torch_self_drafting_greedy_equals_autoregressive():
    """The early exit on a real model: its draft reuses the target's cache, and must leave
    it exactly as it was (fixed: it drafts every step, wherever it would pay)."""
    same_ids_as_autoregressive("torch", "self", "fixed", n=2)


@needs_llama
def test_llama_cpp_refuses_self_drafting_with_the_way_out():
    with pytest.raises(ModelError, match="--backend torch"):
        load(DRAFT, drafter="self", backend="llama.cpp")


@needs_llama
@pytest.mark.parametrize("policy", ["fixed", "heuristic", "confidence"])
def test_llama_cpp_ngram_greedy_equals_autoregressive(policy):
    same_ids_as_autoregressive("llama.cpp", "ngram", policy, n=3)


@needs_llama
@pytest.mark.parametrize("policy", ["fixed", "confidence"])
def test_llama_cpp_model_drafter_greedy_equals_autoregressive(policy):
    same_ids_as_autoregressive("llama.cpp", "model", policy, n=3, draft=DRAFT)


@needs_llama
@pytest.mark.parametrize("drafter", ["auto", "model"])
def test_llama_cpp_goodput_greedy_equals_autoregressive(drafter):
    same_ids_as_autoregressive("llama.cpp", drafter, "goodput", n=3, draft=DRAFT)


@needs_llama
def test_llama_cpp_hidden_states_leave_the_logits_unchanged():
    model = load_backend(DRAFT, "llama.cpp")
    ids = model.tokenizer.encode("def add(a, b):\n    return a + b\n\nprint(add(1, 2))")
    model.reset()
    plain = model.forward(ids).clone()
    model.reset()
    logits, hidden = model.forward_hidden(ids)
    assert torch.equal(plain, logits)
    assert hidden.shape == (len(ids), 896) and torch.isfinite(hidden).all()


@needs_llama
def test_llama_cpp_rollback_matches_fresh_prefill():
    """A rejected draft leaves no trace: the same accepted steps with and without it give
    identical logits. A single-batch fresh prefill agrees up to llama.cpp's batch-size
    dependent rounding (about 0.1 in logits here), so there only the argmax is compared."""
    backend = load_backend(DRAFT, "llama.cpp")
    prompt = encode_prompt(backend.tokenizer, PROMPTS[0], chat=True)

    def next_logits(rejected: list[int]) -> torch.Tensor:
        backend.reset()
        backend.prefill(prompt)
        if rejected:
            backend.forward(rejected)  # a draft the target rejected entirely
            backend.rollback(len(prompt))
        backend.forward([10, 11])  # a draft accepted in part
        backend.rollback(len(prompt) + 1)
        return backend.forward([12]).clone()

    after_rollback = next_logits(rejected=[1, 2, 3, 4, 5])
    assert torch.equal(after_rollback, next_logits(rejected=[]))
    backend.reset()
    backend.prefill([*prompt, 10])
    fresh = backend.forward([12]).clone()
    assert int(after_rollback.argmax()) == int(fresh.argmax())
    assert torch.allclose(after_rollback, fresh, atol=0.5)


# A Spec-Bench rag-length prompt: on an Intel Xeon, ggml's flash attention scored a batch's
# rows differently from one-token steps only once the cache held several hundred tokens.
LONG_PROMPT = " ".join([PROMPTS[1]] * 40) + " Answer in one sentence."


@needs_llama
@pytest.mark.parametrize("model", [DRAFT, "qwen2.5-coder-1.5b"])
@pytest.mark.parametrize("text", [PROMPTS[0], LONG_PROMPT], ids=["short", "long"])
def test_llama_cpp_scores_a_batch_exactly_as_one_token_at_a_time(model, text):
    """What makes greedy verification on llama.cpp exact: row i of forward(k tokens) is
    bit-identical to decoding those tokens one by one, and so is the cache they leave."""
    if not model_path(NAMED_MODELS[model]).is_file():
        pytest.skip(f"{model} is not pulled")
    backend = load_backend(model, "llama.cpp")
    prompt = encode_prompt(backend.tokenizer, text, chat=True)
    tokens = [73594, 12669, 198, 1040, 20501, 510, 262, 707]
    backend.prefill(prompt)
    one_by_one = torch.stack([backend.forward([t])[0].clone() for t in tokens])
    after_singles = backend.forward([100])[0].clone()
    backend.reset()
    backend.prefill(prompt)
    batched = backend.forward(tokens).clone()
    after_batch = backend.forward([100])[0].clone()
    assert torch.equal(batched, one_by_one)
    assert torch.equal(after_batch, after_singles)


@needs_llama
def test_llama_cpp_score_prompt_is_prefill_then_the_last_row():
    """The prompt's last row comes from its prefill batch: bit-identical to a separate
    one-token step for a short prompt (one kernel), the same argmax for a long one."""
    backend = load_backend(DRAFT, "llama.cpp")
    for prompt in ([9707, 11, 1879, 0, 358], encode_prompt(backend.tokenizer, PROMPTS[0], True)):
        backend.reset()
        scored = backend.score_prompt(prompt)
        assert backend.length == len(prompt)
        after = backend.forward([100])[0].clone()
        backend.reset()
        backend.prefill(prompt[:-1])
        alone = backend.forward(prompt[-1:])[0].clone()
        if len(prompt) <= 7:
            assert torch.equal(scored, alone)
            assert torch.equal(after, backend.forward([100])[0])
        assert int(scored.argmax()) == int(alone.argmax())
        assert torch.allclose(scored, alone, atol=0.5)


@needs_llama
def test_llama_cpp_and_torch_share_the_chat_format():
    ids = {}
    for name in ("llama.cpp", "torch"):
        tokenizer = load_backend(DRAFT, name).tokenizer
        ids[name] = encode_prompt(tokenizer, PROMPTS[0], chat=True)
    assert ids["llama.cpp"] == ids["torch"]


@needs_llama
@pytest.mark.parametrize("accepted", [3, 1], ids=["last-path", "other-path"])
def test_llama_cpp_tree_rows_and_commit_match_one_token_decoding(accepted):
    """Every node's row of a tree forward is bit-identical to decoding its root path one
    token at a time; after commit(path) the next row equals the one after decoding the
    committed tokens one at a time (the path scored last, and one that must be re-fed)."""
    from adaspec.tree import ROOT, TokenTree

    backend = load_backend(DRAFT, "llama.cpp")
    prompt = encode_prompt(backend.tokenizer, PROMPTS[0], chat=True)
    tree = TokenTree((73594, 12669, 198, 1040, 20501), (ROOT, 0, 0, 1, ROOT))

    def one_by_one(path_tokens: list[int]) -> torch.Tensor:
        backend.reset()
        backend.prefill(prompt)
        rows = [backend.forward([t])[0].clone() for t in path_tokens]
        return torch.stack(rows)

    backend.reset()
    backend.prefill(prompt)
    rows = backend.forward(tree.tokens, tree.parents).clone()
    path = tree.path(accepted)
    backend.commit(path)
    after_commit = backend.forward([100])[0].clone()
    for node in range(len(tree)):
        assert torch.equal(rows[node], one_by_one(tree.path_tokens(node))[-1]), node
    want = one_by_one([*tree.path_tokens(accepted), 100])[-1]
    assert torch.equal(after_commit, want)


@needs_llama
@pytest.mark.parametrize(("target", "drafter"), [(DEFAULT_TARGET, "none"), (DRAFT, "ngram")])
def test_llama_cpp_requests_in_flight_decode_as_each_alone(target, drafter):
    """Four requests whose steps share llama_decodes (a sequence and a KV stream each,
    at most 7 tokens a decode) return the ids each returns alone, one joining late."""
    engine = load(target, drafter=drafter, policy="fixed", backend="llama.cpp", slots=4)
    prompts = [*PROMPTS, "Explain what a hash map is in two sentences."]
    config = GenerationConfig(max_new_tokens=24)
    ids = [encode_prompt(engine.target.tokenizer, text, chat=True) for text in prompts]
    alone = [engine.generate(prompt, config).token_ids for prompt in ids]
    gens = [Generation(engine, prompt, config, slot) for slot, prompt in enumerate(ids)]
    for gen in gens[:3]:
        engine.begin(gen)
    engine.step_all(gens[:3])
    engine.begin(gens[3])
    while active := [gen for gen in gens if not gen.done]:
        engine.step_all(active)
    assert [gen.token_ids for gen in gens] == alone
    assert any(s.batch_rows and s.batch_rows > s.positions for s in gens[0].stats.steps)


@needs_llama
def test_llama_cpp_a_reused_prompt_prefix_scores_as_a_cold_prefill():
    """A prompt prefilled in pieces of 8 tokens or more caches the same keys and values
    however it is split, so a slot may reuse an earlier prompt's prefix exactly as long as
    at least 8 tokens are left to prefill (the scheduler's rule)."""
    from adaspec.backends.llama_cpp import PREFILL_INVARIANT, even_pieces

    backend = load_backend(DRAFT, "llama.cpp")
    prompt = encode_prompt(backend.tokenizer, " ".join(PROMPTS * 4), chat=True)
    assert all(end - start >= PREFILL_INVARIANT for start, end in even_pieces(515, 512))
    backend.reset()
    cold = backend.score_prompt(prompt).clone()
    for reused in (1, 8, 40, len(prompt) - 20, len(prompt) - PREFILL_INVARIANT):
        backend.reset()
        backend.score_prompt([*prompt[:-1], 7])  # an earlier request's prompt, then reuse
        backend.rollback(reused)
        assert torch.equal(backend.score_prompt(prompt[reused:]), cold), reused


@needs_llama
def test_llama_cpp_server_answers_as_generate_alone_and_four_in_flight():
    """The default pair behind the server as `adaspec serve --parallel 4` runs it (auto
    drafter, goodput), asked by the official openai client: each greedy answer is plain
    decoding's, token for token, asked alone and with four requests in flight."""
    import openai

    from tests.live import live_server

    plain = load(DEFAULT_TARGET, drafter="none", backend="llama.cpp")
    prompts = [*PROMPTS, "Explain what a hash map is in two sentences."]
    ids = [encode_prompt(plain.target.tokenizer, text, chat=False) for text in prompts]
    want = [plain.generate(prompt, GenerationConfig(max_new_tokens=24)) for prompt in ids]
    del plain
    engine = load(DEFAULT_TARGET, backend="llama.cpp", slots=4)
    with live_server(engine, parallel=4, model_id=DEFAULT_TARGET) as server:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=300)

        def ask(prompt: list[int]) -> tuple[str, int]:
            answer = api.completions.create(
                model=DEFAULT_TARGET, prompt=prompt, max_tokens=24, temperature=0
            )
            return answer.choices[0].text, answer.usage.completion_tokens

        alone = [ask(prompt) for prompt in ids]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(ask, ids))
    expected = [(result.text, len(result.token_ids)) for result in want]
    assert alone == expected
    assert together == expected
