"""What a caller may hand ``Engine.generate``/``stream``: text or token ids, and either a
GenerationConfig or the keyword options of Hugging Face's ``generate()``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from adaspec.backends.base import Tokenizer
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.errors import ConfigError

CONFIG_OPTIONS = {f.name for f in fields(GenerationConfig)} - {"sampling"}
SAMPLING_OPTIONS = {f.name for f in fields(SamplingParams)}


def encode_prompt(tokenizer: Tokenizer | None, text: str, chat: bool) -> list[int]:
    """Token ids of a prompt, through the model's chat template when ``chat`` is set."""
    if not text.strip():
        raise ConfigError("the prompt is empty; give some text to continue")
    if tokenizer is None:
        raise ConfigError("this model has no tokenizer; pass token ids instead of text")
    if chat:
        return tokenizer.apply_chat([{"role": "user", "content": text}])
    return tokenizer.encode(text)


def prompt_ids(tokenizer: Tokenizer | None, prompt: str | Sequence[int], chat: bool) -> list[int]:
    """Text is encoded (as a chat turn when ``chat``); token ids pass as they are."""
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, prompt, chat)
    if chat:
        raise ConfigError("chat=True formats text; pass the prompt as text, not token ids")
    return list(prompt)


def request_config(config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    """The config given, with any keyword options (max_new_tokens, temperature, top_k,
    top_p, seed, stop_at_eos) put over it."""
    unknown = set(options) - CONFIG_OPTIONS - SAMPLING_OPTIONS
    if unknown:
        valid = ", ".join(sorted(CONFIG_OPTIONS | SAMPLING_OPTIONS))
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    config = config or GenerationConfig()
    sampling = {k: v for k, v in options.items() if k in SAMPLING_OPTIONS}
    general = {k: v for k, v in options.items() if k in CONFIG_OPTIONS}
    return replace(config, sampling=replace(config.sampling, **sampling), **general)
