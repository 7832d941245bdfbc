"""Backends own weights, tokenizer and KV cache; the engine only calls their protocol."""

from adaspec.backends.base import BACKENDS, Backend, Tokenizer, check_same_vocabulary

__all__ = ["BACKENDS", "Backend", "Tokenizer", "check_same_vocabulary"]
