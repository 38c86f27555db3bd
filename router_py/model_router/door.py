"""The front door (docs/data-plane.md): with MODEL_ROUTER_DOOR on, the Rust
core accepts on the public port in each worker and hands every request to
this app, which Granian serves on a private Unix socket.

`model-router serve` binds the port once (`bind`) and tells the workers,
which inherit it, where it is and where the app listens; each worker starts
its door when it makes the app (`start_door`) and drains it as soon as Granian
tells the worker to stop, so both stop taking requests together.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from . import _core
from .settings import Settings

# How `serve` tells its workers (forked by Granian) where the port and the app are.
FD_ENV = "MODEL_ROUTER_DOOR_FD"
APP_SOCKET_ENV = "MODEL_ROUTER_APP_SOCKET"
# The caller's address as the door saw it; trusted only behind the door.
PEER_HEADER: str = _core.DOOR_PEER_HEADER
# The room for a Unix socket's path (sun_path, with its closing NUL, on Linux).
SOCKET_PATH_MAX = 108
# At the worker's end, how long the door's last answers may take to leave.
LAST_WRITES_S = 2.0


def bind(settings: Settings) -> tuple[socket.socket, Path]:
    """The public port, bound without SO_REUSEPORT (a second instance fails
    here), and a private path for the app's socket. Raises OSError."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    public = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Only lets the bind past connections of a previous run in TIME_WAIT.
        public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        public.bind((settings.host, settings.port))
        public.listen(settings.backlog)
    except OSError:
        public.close()
        raise
    public.set_inheritable(True)
    app_socket = _private_socket_path()
    os.environ[FD_ENV] = str(public.fileno())
    os.environ[APP_SOCKET_ENV] = str(app_socket)
    return public, app_socket


def _private_socket_path() -> Path:
    """A path for the app's socket in a new directory only we may enter (mode
    0700), in TMPDIR, or in /tmp when TMPDIR is too long for a socket's path
    (108 bytes on Linux)."""
    for parent in (None, "/tmp"):
        path = Path(tempfile.mkdtemp(prefix="model-router-app-", dir=parent)) / "app.sock"
        if len(os.fsencode(path)) < SOCKET_PATH_MAX:
            return path
        path.parent.rmdir()
    raise OSError(f"no temporary directory short enough for a socket's path: {path}")


def start_door(settings: Settings) -> _core.Door | None:
    """In a worker `serve` started with the door on: the door on the port it
    inherited, drained when the worker is told to stop. None otherwise."""
    fd = os.environ.get(FD_ENV)
    if fd is None:
        return None
    door = _core.Door(
        int(fd),
        os.environ[APP_SOCKET_ENV],
        settings.max_connections,
        settings.header_read_timeout_ms,
        settings.max_body_bytes,
        settings.tls_cert,
        settings.tls_key,
        settings.tls_client_ca,
    )
    _drain_on_stop(door)
    return door


def _drain_on_stop(door: _core.Door) -> None:
    """Granian's worker learns of SIGINT and SIGTERM through the handlers its
    `set_loop_signals` puts on the loop, which it imports after it has made
    the app: wrap it so that the door drains first, on the same signal
    (Granian offers no hook of its own)."""
    import granian._signals as signals

    make = signals.set_loop_signals

    def set_loop_signals(loop: Any) -> Any:
        stopping = make(loop)

        def stop() -> None:
            door.drain()
            stopping.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        return stopping

    signals.set_loop_signals = set_loop_signals  # type: ignore[assignment]
