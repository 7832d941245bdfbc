"""What a user may set about the drafters (the CLI's and the server's flags), one frozen
value handed to every drafter's ``create``: a drafter reads the fields that are its own."""

from __future__ import annotations

from dataclasses import dataclass

from adaspec.errors import ConfigError


@dataclass(frozen=True)
class DrafterOptions:
    """``suffix_cache_tokens``: earlier requests' output tokens the suffix drafter keeps
    (shared by every request the engine serves; 0: each request drafts from itself only).
    ``draft_window``: the last tokens of the text a draft model attends to, beside the
    first few (0: all of it; see drafters/model.py, draft_view)."""

    suffix_cache_tokens: int = 16_384
    draft_window: int = 0

    def __post_init__(self) -> None:
        if self.suffix_cache_tokens < 0:
            raise ConfigError(
                f"--suffix-cache-tokens must be 0 or more, got {self.suffix_cache_tokens}; "
                "0 keeps no earlier requests' outputs"
            )
        if self.draft_window < 0:
            raise ConfigError(
                f"--draft-window must be 0 or more, got {self.draft_window}; "
                "0 lets the draft model attend to the whole text"
            )


DEFAULT_OPTIONS = DrafterOptions()
