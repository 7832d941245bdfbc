"""Drafters: what to propose. Importing this package registers the built-in ones."""

from adaspec.draft import Draft
from adaspec.drafters import (  # noqa: F401
    aded,
    auto,
    model,
    model_tree,
    ngram,
    none,
    recycling,
    self_draft,
    suffix,
)
from adaspec.drafters.base import DRAFTERS, Drafter

__all__ = ["DRAFTERS", "Draft", "Drafter"]
