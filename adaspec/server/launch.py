"""``adaspec serve``: load the engine, open the socket, run uvicorn until SIGTERM or Ctrl-C.

The engine loads before the socket opens, so a missing model is one line and exit 1, not
a server that never gets ready; the warm-up runs with the socket open (/health: 503).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn

from adaspec.build import EngineSpec, build_engine
from adaspec.engine import Engine
from adaspec.errors import ConfigError, ModelError
from adaspec.server.app import create_app
from adaspec.server.model_thread import ModelThread
from adaspec.server.settings import ServerSettings
from adaspec.server.state import ServerState


def load_engine(spec: EngineSpec, thread: ModelThread) -> Engine:
    """The one place the server builds its engine (``spec.slots``: one per request run at
    once, as ``--parallel`` asks), on the thread that will run all its model calls: a
    profile timed at load runs there too (ModelThread says why)."""
    return thread.run(build_engine, spec)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to the address (port 0: a free one), or a ConfigError saying why not.
    Bound before the engine loads, so a port in use fails at once, not after the load;
    uvicorn listens on it once the app is up (until then connections are refused)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    engine: Engine,
    settings: ServerSettings,
    announce: Callable[[str], None],
    sock: socket.socket | None = None,
    thread: ModelThread | None = None,
) -> None:
    """Serve until told to stop, on ``sock`` (else a socket bound to the settings' address);
    ``announce`` gets the base URL once the server is ready; ``thread``: the one that
    loaded the engine. Raises ModelError where the warm-up failed."""
    app = create_app(engine, settings, thread)
    sock = sock or bind(settings.host, settings.port)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    server = uvicorn.Server(config)
    state: ServerState = app.state.server
    url = base_url(sock)
    watcher = threading.Thread(
        target=_announce_when_ready, args=(server, state, lambda: announce(url)), daemon=True
    )
    watcher.start()
    with signals_end_quietly():
        server.run(sockets=[sock])
    if state.status == "error":
        raise ModelError(f"the server stopped: its warm-up failed: {state.problem}")


def _announce_when_ready(
    server: uvicorn.Server, state: ServerState, announce: Callable[[], None]
) -> None:
    """Once the warm-up settled and uvicorn listens: announce, or stop a failed server."""
    state.settled.wait()
    listening = wait_until_listening(server)
    if state.status == "error":
        server.should_exit = True
    elif listening:
        announce()


def wait_until_listening(server: uvicorn.Server) -> bool:
    """Block until uvicorn listens (True: its socket refuses connections until then) or is
    told to stop first (False)."""
    while not server.started and not server.should_exit:
        time.sleep(0.02)
    return server.started


@contextlib.contextmanager
def signals_end_quietly() -> Iterator[None]:
    """uvicorn handles SIGTERM and SIGINT (drain, then stop), then raises the signal again
    for whatever handler was there before it: a no-op, so the process exits 0."""
    caught = (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, lambda *_: None) for sig in caught}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
