"""The warm-up, before the server reports ready, so the first user's request pays no
first-call costs (allocations, kernels chosen, caches laid): one forward of each kind a
step can make on each model, then requests through the scheduler, side by side where it
has the slots (a pass shared by requests, greedy and sampled acceptance, text decoding)."""

from __future__ import annotations

import asyncio
import logging

from adaspec.backends.warm import warm_paths
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
    """Warm every path on the models' thread, start the scheduler there, warm it up, then
    mark the server ready (or failed, with why). Requests are refused until ready."""
    prompt = server.tokenizer.encode(WARM_UP_PROMPT)
    engine = server.engine
    try:
        await asyncio.wrap_future(server.thread.submit(warm_paths, engine.target, engine.draft))
        server.scheduler.start()
        side_by_side = server.settings.parallel  # more would queue, and a queue may be full
        for first in range(0, len(WARM_UPS), side_by_side):
            completions = [
                Completion(server.scheduler, prompt, config, [], server.tokenizer, name="warm-up")
                for config in WARM_UPS[first : first + side_by_side]
            ]
            await asyncio.gather(*(completion.whole() for completion in completions))
    except Exception as error:  # the server answers 503 with why, and says so in its log
        problem = translate(error).message
        log.error("warm-up failed: %s", problem)
        server.settle(problem=problem)
        return
    server.settle()
