"""Which conversation a chat request continues, and whether its replica may take it: the
Ray-free rules of cluster_routing.py's router.

A turn's messages are the previous turn's plus the assistant's answer and a new user
message, so a request continues the conversation whose messages are its own less the last
two. Keys are digests of the messages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from adaspec.server.cluster_gateway import Forwarded

SLACK = 2  # requests in flight a conversation's replica may have beyond the least busy


def digest(messages: list[Any]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def conversation_keys(request: Forwarded) -> tuple[str | None, str | None]:
    """(the conversation this request continues, the one its next turn will continue);
    None for anything but a chat completion."""
    if request.path != "/v1/chat/completions":
        return None, None
    try:
        messages = json.loads(request.body)["messages"]
    except (ValueError, KeyError, TypeError):
        return None, None
    if not isinstance(messages, list):
        return None, None
    continues = digest(messages[:-2]) if len(messages) >= 3 else None
    return continues, digest(messages)


def home_is_free(home: int | None, others: Sequence[int | None], slack: int = SLACK) -> bool:
    """Whether a conversation's replica, ``home`` requests in flight, may take its next turn
    while the candidates have ``others`` (None: not known yet, which does not count)."""
    known = [n for n in others if n is not None]
    return home is None or not known or home <= min(known) + slack
