"""``adaspec serve --replicas N``: the lone server's app and scheduler, N times, on Ray Serve.

Each replica (cluster_replica.py) is a Ray Serve deployment replica that loads the engine
once and runs its own scheduler and goodput policy. The ``adaspec serve`` process is the
front: it joins the cluster (``--address``, else it starts a local one that ends with it),
deploys the replicas, and serves the gateway (cluster_gateway.py) with uvicorn, handing each
request to a replica through a Ray Serve handle: Ray's power-of-two-choices router sends it
to the less busy of two replicas, so a long answer does not queue short ones behind it.
Ray is an optional extra (``pip install -e ".[cluster]"``): nothing imports it before a
cluster is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from adaspec.build import EngineSpec
from adaspec.errors import ConfigError
from adaspec.server.cluster_gateway import Forwarded, Replicas
from adaspec.server.launch import wait_until_listening
from adaspec.server.settings import ServerSettings

APP_NAME = "adaspec"
DEPLOYMENT = "adaspec"
INSTALL = 'pip install -e ".[cluster]" (or pip install "ray[serve]")'
# conversation: a chat's next turn to the replica of its last (cluster_routing.py), unless
# busy; load: Ray Serve's power of two choices alone.
ROUTINGS = ("conversation", "load")


@dataclass(frozen=True)
class ClusterSettings:
    """How many replicas, where, and what each reserves."""

    replicas: int = 1
    address: str | None = None  # a running cluster's (``ray start --head``); None: local
    min_replicas: int | None = None  # both given: autoscale between them on load
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    routing: str = "conversation"  # or "load": power of two choices alone

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ConfigError(
                f"--routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}"
            )
        self._check_counts()

    def _check_counts(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}")
        low, high = self.min_replicas, self.max_replicas
        if (low is None) != (high is None):
            raise ConfigError("give both --min-replicas and --max-replicas, or neither")
        if low is not None and high is not None and not 1 <= low <= high:
            raise ConfigError("--min-replicas must be at least 1 and at most --max-replicas")

    def deployment_options(self, parallel: int) -> dict[str, Any]:
        """Ray Serve's options: a fixed count, or a range scaled on requests in flight per
        replica (its slots); the resources each replica's actor reserves."""
        resources = {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica}
        options: dict[str, Any] = {
            "ray_actor_options": resources,
            "max_ongoing_requests": parallel + 64,  # its slots and a queue of its own
            "health_check_period_s": 2.0,
            "graceful_shutdown_timeout_s": 60.0,
        }
        if self.routing == "conversation":
            from ray.serve.config import RequestRouterConfig

            from adaspec.server.cluster_routing import ConversationRouter

            options["request_router_config"] = RequestRouterConfig(
                request_router_class=ConversationRouter
            )
        if self.min_replicas is None:
            return options | {"num_replicas": self.replicas}
        autoscaling = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "initial_replicas": min(max(self.replicas, self.min_replicas), self.max_replicas),
            "target_ongoing_requests": parallel,
        }
        return options | {"autoscaling_config": autoscaling}


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        message = f"--replicas needs Ray Serve, which is not installed: {INSTALL}"
        raise ConfigError(message) from None


@contextlib.contextmanager
def deployed(
    spec: EngineSpec, settings: ServerSettings, cluster: ClusterSettings
) -> Iterator[Replicas]:
    """The replicas deployed and running on the cluster; what the gateway calls them by.
    At the end the deployment goes, and a local cluster with it."""
    require_ray()
    import ray
    from ray import serve

    from adaspec.server.cluster_replica import Replica

    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        options = cluster.deployment_options(settings.parallel)
        deployment = serve.deployment(Replica, name=DEPLOYMENT, **options)
        handle = serve.run(deployment.bind(spec, settings), name=APP_NAME, route_prefix=None)
        yield replicas_of(handle, cluster)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def replicas_of(handle: Any, cluster: ClusterSettings) -> Replicas:
    from ray import exceptions, serve

    streaming = handle.options(stream=True)

    async def forward(request: Forwarded) -> AsyncIterator[dict[str, Any]]:
        response = streaming.forward.remote(request)
        try:
            async for part in response:
                yield part
        finally:
            response.cancel()  # a no-op once done; else the client left: cancel upstream

    async def ready() -> int:
        return await asyncio.to_thread(running_replicas, serve)

    async def metrics() -> dict[str, str]:
        count = max(1, await ready())
        calls = [handle.metrics.remote() for _ in range(4 * count)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        return dict(a for a in answers if isinstance(a, tuple))

    def is_lost(error: BaseException) -> bool:
        lost = (exceptions.RayActorError, exceptions.ActorUnavailableError)
        return isinstance(error, lost)

    attempts = max(3, (cluster.max_replicas or cluster.replicas) + 1)
    return Replicas(forward, ready, metrics, is_lost, attempts)


def running_replicas(serve: Any) -> int:
    app = serve.status().applications.get(APP_NAME)
    if app is None or DEPLOYMENT not in app.deployments:
        return 0
    return int(app.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0))


def serve_replicas(
    spec: EngineSpec,
    settings: ServerSettings,
    cluster: ClusterSettings,
    announce: Callable[[str], None],
) -> None:
    """Deploy the replicas, then serve the gateway until SIGTERM or Ctrl-C."""
    import uvicorn

    from adaspec.server.cluster_gateway import create_gateway
    from adaspec.server.launch import base_url, bind, signals_end_quietly

    sock = bind(settings.host, settings.port)  # a port in use fails before the cluster starts
    with deployed(spec, settings, cluster) as replicas:
        config = uvicorn.Config(create_gateway(replicas), log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        url = base_url(sock)
        threading.Thread(target=announce_when_up, args=(server, url, announce), daemon=True).start()
        with signals_end_quietly():
            server.run(sockets=[sock])


def announce_when_up(server: Any, url: str, announce: Callable[[str], None]) -> None:
    """Once uvicorn listens (the socket refuses connections until then): announce."""
    if wait_until_listening(server):
        announce(url)
