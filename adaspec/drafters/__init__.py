"""Drafters: what to propose. Importing this package registers the built-in ones."""

from adaspec.drafters import auto, model, ngram, none  # noqa: F401  (registers them)
from adaspec.drafters.base import DRAFTERS, Draft, Drafter

__all__ = ["DRAFTERS", "Draft", "Drafter"]
