"""Running the first layers of a model only, then its own final norm and LM head: the
target drafting for itself (DEL, LayerSkip, SWIFT) without a second model in memory.

The exit reads and extends the target's own cache for the layers it runs: a committed
token's keys and values there are the very ones the full model computed. What it adds is
dropped on leaving, by putting back the tensors it found (never recomputed, so the
target's cache is bit for bit what it was).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, runtime_checkable

import torch
from transformers import DynamicCache, PreTrainedModel

# One call of an exit run: the text so far (committed tokens, then those drafted in this
# run) -> the exit's logits [vocab] for the token after it.
ExitRun = Callable[[Sequence[int]], torch.Tensor]


@runtime_checkable
class EarlyExit(Protocol):
    """A backend that can stop a forward after its first ``layer`` layers."""

    @property
    def exit_layers(self) -> int:
        """Its layers: an exit runs 1 to ``exit_layers - 1`` of them."""
        ...

    def early_exit(self, layer: int) -> AbstractContextManager[ExitRun]:
        """A context: inside, calls score the text after ``layer`` layers, each feeding only
        what the cache lacks; on leaving, the cache is as it was."""
        ...


def decoder_parts(model: PreTrainedModel):
    """The embedding, decoder layers, rotary embedding and final norm of a Llama-family
    causal LM (Qwen2, Llama, Mistral), or None where it is built otherwise."""
    inner = getattr(model, "model", None)
    names = ("embed_tokens", "layers", "rotary_emb", "norm")
    if inner is None or not all(hasattr(inner, name) for name in names):
        return None
    return inner


@contextmanager
def exit_run(model: PreTrainedModel, cache: DynamicCache, layer: int) -> Iterator[ExitRun]:
    """``EarlyExit.early_exit`` over a Llama-family model and its cache (which holds the
    committed text, all of it or all but its last token)."""
    inner = decoder_parts(model)
    kept = [(held.keys, held.values) for held in cache.layers[:layer]]
    held = cache.get_seq_length()  # positions the exit's layers hold now

    def run(text: Sequence[int]) -> torch.Tensor:
        nonlocal held
        if held >= len(text):  # the last token was prefilled: its row is needed again
            _crop_layers(cache, layer, len(text) - 1)
            held = len(text) - 1
        hidden = _layers(model, inner, cache, layer, list(text[held:]), held)
        held = len(text)
        return model.lm_head(inner.norm(hidden[:, -1:]))[0, -1]  # [vocab]

    try:
        with torch.inference_mode():
            yield run
    finally:
        for held_layer, (keys, values) in zip(cache.layers, kept, strict=False):
            held_layer.keys, held_layer.values = keys, values


def _layers(
    model: PreTrainedModel, inner, cache: DynamicCache, layer: int, tokens: list[int], past: int
) -> torch.Tensor:
    """The hidden states [1, n, hidden] after the first ``layer`` layers of ``tokens``
    following ``past`` cached positions, their keys and values appended to the cache."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokens], dtype=torch.long, device=device)  # [1, n]
    positions = torch.arange(past, past + len(tokens), device=device)[None]  # [1, n]
    hidden = inner.embed_tokens(ids)
    embeddings = inner.rotary_emb(hidden, positions)
    mask = _causal_mask(len(tokens), past, hidden.dtype, device)
    for decoder in inner.layers[:layer]:
        hidden = decoder(
            hidden,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            position_embeddings=embeddings,
        )
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def _causal_mask(n: int, past: int, dtype: torch.dtype, device) -> torch.Tensor | None:
    """None for one row (it sees everything cached); else [1, 1, n, past + n], each row
    seeing the cache and the rows up to its own."""
    if n == 1:
        return None
    seen = torch.ones(n, past + n, dtype=torch.bool).tril(past)
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def _crop_layers(cache: DynamicCache, layer: int, length: int) -> None:
    for held in cache.layers[:layer]:
        held.keys = held.keys[..., :length, :]
        held.values = held.values[..., :length, :]
