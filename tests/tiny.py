"""Tiny randomly initialised models, built in the test session: no network, no GPU.

float64 weights keep batched and one-token forwards numerically identical enough that
greedy argmax never flips on round-off, so token-for-token equality is a fair assertion.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from adaspec.backends.torch_hf import TorchBackend

# The engine's clock, advanced only by the target's forwards: a tiny model's real timings
# are overhead and noise, and would decide whether drafting pays.
from adaspec.bench.replay import ScriptedClock as FakeClock
from adaspec.config import GenerationConfig
from adaspec.drafters.auto import AutoDrafter
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.ngram import NgramDrafter
from adaspec.drafters.none import NoDrafter
from adaspec.engine import Engine
from adaspec.policies.confidence import ConfidencePolicy
from adaspec.policies.fixed import FixedPolicy
from adaspec.policies.goodput import GoodputPolicy
from adaspec.policies.heuristic import HeuristicPolicy

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "def reverse(head):\n    prev = None\n    while head:\n"
    "        head.next, prev, head = prev, head, head.next\n    return prev\n",
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts and verifies.",
    "Summarize the following article in three sentences. The article says that models run.",
] * 20


def tiny_model(
    seed: int = 0,
    vocab: int = 96,
    hidden: int = 32,
    layers: int = 2,
    init: float = 0.3,
    eos: int | None = None,
) -> Qwen2ForCausalLM:
    """A 2-layer Qwen2 with random weights, sharp enough that its argmax is stable."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=init,
        tie_word_embeddings=False,
        eos_token_id=eos,
    )
    model = Qwen2ForCausalLM(config).to(torch.float64).eval()
    model.generation_config.eos_token_id = eos
    return model


def perturbed(model: Qwen2ForCausalLM, scale: float, seed: int = 1) -> Qwen2ForCausalLM:
    """A copy of ``model`` with noise added: a draft that agrees with it only partly."""
    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale * p.std())
    return other


def backend(model: Qwen2ForCausalLM, label: str = "tiny") -> TorchBackend:
    return TorchBackend(model, None, label=label)


def ar_tokens(target: TorchBackend, prompt: list[int], max_new: int) -> list[int]:
    engine = Engine(target, NoDrafter(), FixedPolicy(1))
    return engine.generate(prompt, GenerationConfig(max_new_tokens=max_new)).token_ids


DRAFTERS = {
    "none": lambda target: NoDrafter(),
    "ngram": lambda target: NgramDrafter(),
    "model-self": lambda target: ModelDrafter(
        backend(copy.deepcopy(target.model)), target.vocab_size
    ),
    "model-close": lambda target: ModelDrafter(
        backend(perturbed(target.model, 0.3)), target.vocab_size
    ),
    "model-other": lambda target: ModelDrafter(backend(tiny_model(seed=7)), target.vocab_size),
    "auto": lambda target: AutoDrafter(
        {
            "ngram": NgramDrafter(),
            "model": ModelDrafter(backend(perturbed(target.model, 0.3)), target.vocab_size),
        }
    ),
}
POLICIES = {
    "fixed-1": lambda: FixedPolicy(1),
    "fixed-3": lambda: FixedPolicy(3),
    "fixed-6": lambda: FixedPolicy(6),
    "heuristic": lambda: HeuristicPolicy(2),
    "confidence": lambda: ConfidencePolicy(6, threshold=0.4),
    "confidence-low": lambda: ConfidencePolicy(6, threshold=0.05),
    "goodput": lambda: GoodputPolicy(6),
}


def make_tokenizer(vocab_size: int, corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_model_dir(path: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """A Hugging Face model folder (config, weights, tokenizer) as a user would have one."""
    model = tiny_model(seed=seed, vocab=len(tokenizer), eos=tokenizer.eos_token_id)
    model.config.max_position_embeddings = 128
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class ClockedBackend:
    """A backend whose forward over k positions takes 10 + k ms on the FakeClock: a
    GPU-like cost, where speculation pays."""

    def __init__(self, inner, clock: FakeClock) -> None:
        self.inner, self.clock = inner, clock

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def forward(self, tokens, parents=None):
        self.clock.now += (10 + len(tokens)) / 1000
        return self.inner.forward(tokens, parents)

    def slot(self, index: int) -> ClockedBackend:
        """The inner backend's slot on the same clock."""
        return self if index == 0 else ClockedBackend(self.inner.slot(index), self.clock)

    def forward_slots(self, rows):
        """Several slots' rows in one pass: charged once, for all of them."""
        self.clock.now += (10 + sum(len(tokens) for _, tokens, _ in rows)) / 1000
        return self.inner.forward_slots(rows)
