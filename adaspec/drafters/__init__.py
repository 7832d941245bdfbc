"""Drafters: what to propose. Importing this package registers the built-in ones."""

from adaspec.draft import Draft
from adaspec.drafters import auto, model, ngram, none  # noqa: F401  (registers them)
from adaspec.drafters.base import DRAFTERS, Drafter

__all__ = ["DRAFTERS", "Draft", "Drafter"]
