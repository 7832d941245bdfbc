"""Conversation affinity for a cluster (``--routing conversation``): a chat's next turn goes
to the replica that served its last one, where the conversation's keys and values may still
be cached (prefix reuse then skips prefilling them), unless that replica is busier than the
least busy by more than affinity.SLACK requests; then, and for every other request, Ray
Serve's power of two choices. The router runs in the front's process; it keeps the newest
MAX_CONVERSATIONS conversations' replicas.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter

from adaspec.server.affinity import SLACK, conversation_keys, home_is_free
from adaspec.server.cluster_gateway import Forwarded

MAX_CONVERSATIONS = 10_000


def forwarded_of(pending: Any) -> Forwarded | None:
    args = getattr(pending, "args", None) or ()
    return args[0] if args and isinstance(args[0], Forwarded) else None


class ConversationRouter(PowerOfTwoChoicesRequestRouter):
    """Power of two choices, with a conversation's replica tried first while not busy."""

    def initialize_state(self, slack: int = SLACK, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self.slack = slack
        self.homes: OrderedDict[str, Any] = OrderedDict()  # conversation -> replica id

    async def choose_replicas(self, candidate_replicas: list, pending_request: Any = None):
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        request = forwarded_of(pending_request)
        continues = conversation_keys(request)[0] if request else None
        home_id = self.homes.get(continues) if continues else None
        home = next((r for r in candidate_replicas if r.replica_id == home_id), None)
        if home is None:
            return ranks
        cache = self.replica_queue_len_cache
        others = [cache.get(r.replica_id) for r in candidate_replicas]
        if not home_is_free(cache.get(home.replica_id), others, self.slack):
            return ranks
        return [[home], *ranks]

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        request = forwarded_of(pending_request)
        key = conversation_keys(request)[1] if request else None
        if key is not None:
            self.homes[key] = replica_id
            self.homes.move_to_end(key)
            while len(self.homes) > MAX_CONVERSATIONS:
                self.homes.popitem(last=False)
