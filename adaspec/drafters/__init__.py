"""Drafters: what to propose. Importing this package registers the built-in ones."""

from adaspec.draft import Draft
from adaspec.drafters import aded, auto, model, model_tree, ngram, none, recycling  # noqa: F401
from adaspec.drafters.base import DRAFTERS, Drafter

__all__ = ["DRAFTERS", "Draft", "Drafter"]
