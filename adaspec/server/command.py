"""The ``adaspec serve`` command: its options, and the engine and settings built from them.
The server's own modules load only when it runs, so other commands start without them."""

from __future__ import annotations

from typing import Annotated

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
