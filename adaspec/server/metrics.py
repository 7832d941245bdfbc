"""Prometheus metrics of one app, in a registry of its own (several apps can live in one
process, as in the tests), and the middleware that counts every HTTP answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaspec.stats import GenerationStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """What a scraper reads at /metrics. ``busy``, ``queued`` and ``slots`` read the
    scheduler's state when scraped (0 before it runs)."""

    def __init__(
        self, busy: Callable[[], int], queued: Callable[[], int], slots: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.drafted_total = self.accepted_total = 0
        self._counters()
        self._gauges(busy, queued, slots)
        self.ttft = Histogram(
            "adaspec_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.token_gap = Histogram(
            "adaspec_inter_token_latency_seconds",
            "Seconds per token between one engine step's tokens and the next's (one "
            "observation per step: a step may add several tokens).",
            buckets=TOKEN_GAP_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "adaspec_request_duration_seconds",
            "From a generation request's arrival to its last token.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _counters(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.requests = counter(
            "adaspec_requests", "HTTP requests answered.", ("endpoint", "status")
        )
        self.prompt_tokens = counter("adaspec_prompt_tokens", "Prompt tokens of requests run.")
        self.cached_tokens = counter(
            "adaspec_prompt_cached_tokens", "Prompt tokens a slot already held (no prefill)."
        )
        self.completion_tokens = counter("adaspec_completion_tokens", "Tokens generated.")
        self.drafted = counter("adaspec_draft_tokens", "Draft tokens the target verified.")
        self.accepted = counter("adaspec_accepted_tokens", "Draft tokens the target kept.")
        self.cancelled = counter(
            "adaspec_requests_cancelled", "Requests cancelled before their end (disconnects)."
        )

    def _gauges(
        self, busy: Callable[[], int], queued: Callable[[], int], slots: Callable[[], int]
    ) -> None:
        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, registry=self.registry).set_function(read)

        gauge("adaspec_slots_busy", "Slots running a request.", busy)
        gauge("adaspec_slots", "Slots: requests run at once.", slots)
        gauge("adaspec_queue_depth", "Requests waiting for a slot.", queued)
        gauge(
            "adaspec_acceptance_rate",
            "Accepted over drafted tokens since start; 0 while nothing was drafted.",
            self.acceptance_rate,
        )

    def acceptance_rate(self) -> float:
        return self.accepted_total / self.drafted_total if self.drafted_total else 0.0

    def record(self, stats: GenerationStats, cached: int, cancelled: bool) -> None:
        """A finished request's token counts."""
        drafted = sum(s.drafted for s in stats.steps)
        accepted = sum(s.accepted for s in stats.steps)
        self.drafted_total += drafted
        self.accepted_total += accepted
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.cached_tokens.inc(cached)
        self.completion_tokens.inc(stats.new_tokens)
        self.drafted.inc(drafted)
        self.accepted.inc(accepted)
        if cancelled:
            self.cancelled.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text a scraper reads, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountRequests:
    """ASGI middleware: one count per answer, refusals included, by endpoint and status
    code; any path but the app's own counts as "other", so the labels stay few."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope["path"] if scope["path"] in self.paths else "other"
            code = str(status.get("code", 500))
            self.metrics.requests.labels(endpoint=endpoint, status=code).inc()
