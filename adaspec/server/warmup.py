"""The warm-up: requests run through the scheduler before the server reports ready, so the
first user's request pays no first-call costs (allocations, kernels chosen, caches laid)."""

from __future__ import annotations

import logging

from adaspec.config import GenerationConfig, SamplingParams
from adaspec.server.errors import translate
from adaspec.server.generation import Completion
from adaspec.server.state import ServerState

log = logging.getLogger("adaspec.server")

WARM_UP_PROMPT = "Hello! Please say hello back."
WARM_UPS = (
    GenerationConfig(max_new_tokens=4),  # greedy
    GenerationConfig(max_new_tokens=4, sampling=SamplingParams(0.8, 40, 0.95), seed=0),
)


async def warm_up(server: ServerState) -> None:
    """Run the warm-up requests, then mark the server ready (or failed, with why)."""
    prompt = server.tokenizer.encode(WARM_UP_PROMPT)
    try:
        for config in WARM_UPS:
            completion = Completion(
                server.scheduler, prompt, config, [], server.tokenizer, name="warm-up"
            )
            await completion.whole()
    except Exception as error:  # the server answers 503 with why, and says so in its log
        problem = translate(error).message
        log.error("warm-up failed: %s", problem)
        server.settle(problem=problem)
        return
    server.settle()
