"""Attention over grouped-query heads without copying them, for masked forwards on a CPU.

A verify, a tree or several slots' rows pass a 4-D mask; with one, transformers' ``sdpa``
copies every key and value head group (``repeat_kv``) on a CPU before attending: a copy of
the whole cache per layer per forward. SDPA's ``enable_gqa`` reads the shared heads in
place (what it saves is not yet resolved from noise here: docs/benchmarks.md).
Registered with transformers under NAME; anything it does not cover goes to ``sdpa``.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "adaspec_gqa_sdpa"


def gqa_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, heads, q, dim]
    key: torch.Tensor,  # [batch, kv heads, kv, dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    groups = getattr(module, "num_key_value_groups", 1)
    rows, past = query.shape[2], key.shape[2]
    plain = attention_mask is None and rows != past  # sdpa's own causal alignment cases
    extra = any(kwargs.get(name) is not None for name in ("position_bias", "softcap"))
    if groups == 1 or rows == 1 or plain or extra:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    causal = attention_mask is None and (
        getattr(module, "is_causal", True) if is_causal is None else is_causal
    )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, gqa_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_gqa_sdpa(model: PreTrainedModel) -> None:
    """Run ``model``'s attention through gqa_sdpa where it would run transformers' sdpa on
    a CPU (on CUDA a mask with ``enable_gqa`` leaves the fused kernels: sdpa stays)."""
    if model.config._attn_implementation == "sdpa" and model.device.type == "cpu":
        model.set_attn_implementation(NAME)
