"""The ``adaspec serve`` command: its options, and the engine and settings built from them.
The server's own modules load only when it runs, so other commands start without them."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from adaspec import models
from adaspec.build import EngineSpec
from adaspec.cli_options import (
    Backend,
    Context,
    Device,
    Draft,
    DraftBackend,
    Drafter,
    DraftWindow,
    Dtype,
    K,
    Policy,
    SuffixCacheTokens,
    Target,
    Threads,
)
from adaspec.drafters.options import DEFAULT_OPTIONS

if TYPE_CHECKING:
    from adaspec.server.settings import ServerSettings

err = Console(stderr=True)


def serve(
    target: Target = models.DEFAULT_TARGET,
    draft: Draft = None,
    backend: Backend = "auto",
    draft_backend: DraftBackend = None,
    drafter: Drafter = "auto",
    policy: Policy = "goodput",
    k: K = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 8000,
    parallel: Annotated[int, typer.Option(help="Requests run at once (slots).")] = 1,
    prefix_reuse: Annotated[
        bool,
        typer.Option(
            help="Skip prefilling the prefix a free slot's cache holds (a chat's history); "
            "off: every request starts cold, its greedy ids independent of earlier ones."
        ),
    ] = True,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for a slot before 429 answers.")
    ] = 64,
    api_key: Annotated[
        list[str] | None,
        typer.Option(help="Require this key on /v1 (Bearer or X-Api-Key); repeat for several."),
    ] = None,
    device: Device = None,
    dtype: Dtype = None,
    threads: Threads = None,
    context: Context = None,
    suffix_cache_tokens: SuffixCacheTokens = DEFAULT_OPTIONS.suffix_cache_tokens,
    draft_window: DraftWindow = DEFAULT_OPTIONS.draft_window,
    replicas: Annotated[
        int,
        typer.Option(
            help="Replicas of the model on Ray Serve, each with its own slots; requests go "
            "to the less busy (needs the [cluster] extra; docs/serving.md)."
        ),
    ] = 1,
    address: Annotated[
        str | None,
        typer.Option(
            help="Join this Ray cluster (`ray start --head` prints it); else a local one."
        ),
    ] = None,
    min_replicas: Annotated[
        int | None, typer.Option(help="Autoscale between this and --max-replicas on load.")
    ] = None,
    max_replicas: Annotated[int | None, typer.Option(help="See --min-replicas.")] = None,
    routing: Annotated[
        str,
        typer.Option(
            help="With replicas: conversation (a chat's next turn to its last replica, "
            "unless busy) | load (the less busy of two)."
        ),
    ] = "conversation",
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API until SIGTERM or Ctrl-C."""
    from adaspec.server.launch import bind, load_engine
    from adaspec.server.launch import serve as run_server
    from adaspec.server.model_thread import ModelThread
    from adaspec.server.settings import ServerSettings

    spec = EngineSpec(
        target=target,
        draft=draft,
        drafter=drafter,
        policy=policy,
        k=k,
        backend=backend,
        draft_backend=draft_backend,
        device=device,
        dtype=dtype,
        threads=threads,
        context=context,
        slots=parallel,
        suffix_cache_tokens=suffix_cache_tokens,
        draft_window=draft_window,
    )
    settings = ServerSettings(
        model_id=target,
        host=host,
        port=port,
        parallel=parallel,
        prefix_reuse=prefix_reuse,
        max_queue=max_queue,
        api_keys=tuple(api_key or ()),
        drafter=drafter,
        policy=policy,
    )
    if replicas > 1 or address or min_replicas is not None or max_replicas is not None:
        bounds = (min_replicas, max_replicas)
        serve_cluster(spec, settings, replicas, address, bounds, routing)
        return
    sock = bind(host, port)  # a port in use fails now, not after the load
    thread = ModelThread()
    with err.status(f"loading {target}" + (f" and {draft}" if draft else "")):
        engine = load_engine(spec, thread)
    err.print(f"warming up {target}", highlight=False)
    run_server(
        engine,
        settings,
        announce=lambda url: typer.echo(f"adaspec: serving {target} at {url}/v1"),
        sock=sock,
        thread=thread,
    )


def serve_cluster(
    spec: EngineSpec,
    settings: ServerSettings,
    replicas: int,
    address: str | None,
    bounds: tuple[int | None, int | None],
    routing: str,
) -> None:
    from adaspec.server.cluster import ClusterSettings, require_ray, serve_replicas

    gpu = (spec.device or "").startswith("cuda")
    if spec.threads is None and address is None and not gpu:  # this machine's cores, shared
        spec = replace(spec, threads=max(1, (os.cpu_count() or 1) // (bounds[1] or replicas)))
    cluster = ClusterSettings(
        replicas=replicas,
        address=address,
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        routing=routing,
        cpus_per_replica=float(spec.threads or 1),
        gpus_per_replica=1.0 if gpu else 0.0,
    )
    require_ray()
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    err.print(f"starting {replicas} replicas of {spec.target} on {where}", highlight=False)
    serve_replicas(
        spec,
        settings,
        cluster,
        announce=lambda url: typer.echo(f"adaspec: serving {spec.target} at {url}/v1"),
    )
