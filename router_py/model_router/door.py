"""The front door (docs/data-plane.md): with MODEL_ROUTER_DOOR on, the Rust
core accepts on the public port in each worker and hands every request it
does not serve itself to this worker's app, which Granian serves on a
private Unix socket of the worker's own (`own_app_socket`).

`model-router serve` binds the port (`bind`): one listening socket per
worker, with SO_REUSEPORT, so that the kernel spreads new connections
evenly over the workers (one shared queue let one worker's door take most
of a burst of connections: 89% of them in one measured run, at 0.8 x the
rate of an even spread). A second instance is still refused: `serve` holds
a lock named after the port for its life, and binds only once a probe
without SO_REUSEPORT finds the port free. It tells the workers, which
inherit the sockets, where they are and where the app listens; each worker
claims one socket (a lock per socket, given back when the worker dies, so a
respawned worker takes its predecessor's) and starts its door on it when it
makes the app (`start_door`), and drains it as soon as Granian tells the
worker to stop, so both stop taking requests together.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import ssl
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _core
from .engine.write_counter import counter_path
from .settings import Settings

# How `serve` tells its workers (forked by Granian) where the port and the app are.
FD_ENV = "MODEL_ROUTER_DOOR_FD"
APP_SOCKET_ENV = "MODEL_ROUTER_APP_SOCKET"
# The caller's address as the door saw it; trusted only behind the door.
PEER_HEADER: str = _core.DOOR_PEER_HEADER
# The room for a Unix socket's path (sun_path, with its closing NUL, on Linux).
SOCKET_PATH_MAX = 108
# The highest process id Linux hands out (pid_max's ceiling), in a worker's socket's name.
PID_MAX = 4_194_304
# At the worker's end, how long the door's last answers may take to leave.
LAST_WRITES_S = 2.0
# How long a starting worker waits for a socket of the port no door serves.
CLAIM_WAIT_S = 30.0

log = logging.getLogger("model_router.door")


def port_taken(host: str, port: int) -> OSError | None:
    """Whether another process listens on the port: a probe binds without
    SO_REUSEPORT (SO_REUSEADDR only lets it past connections of a previous
    run in TIME_WAIT), which any socket on the port refuses, SO_REUSEPORT or
    not: Granian's workers and the door's sockets share the port that way,
    and a second instance would otherwise start and silently share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _lock(port: int, name: str) -> int | None:
    """A lock named after the port, held until its descriptor closes (or its
    process ends); None when another process holds it."""
    path = counter_path(port).with_suffix(f".{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_port(host: str, port: int) -> int:
    """This instance's hold on the port, door or not: a lock named after it
    (its descriptor, to keep open while serving), then a probe that finds
    the port free. Raises OSError when another instance or program holds it."""
    instance = _lock(port, "serve")
    if instance is None:
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    taken = port_taken(host, port)
    if taken is not None:
        os.close(instance)
        raise taken
    return instance


def bind(settings: Settings) -> tuple[list[socket.socket], Path]:
    """The public port (claimed already): one socket per worker
    (SO_REUSEPORT), and a private path for the app's socket."""
    listeners: list[socket.socket] = []
    try:
        for _ in range(settings.workers):
            listeners.append(_listener(settings))
        app_socket = _private_socket_path()
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    os.environ[FD_ENV] = ",".join(str(listener.fileno()) for listener in listeners)
    os.environ[APP_SOCKET_ENV] = str(app_socket)
    return listeners, app_socket


def _listener(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((settings.host, settings.port))
        listener.listen(settings.backlog)
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def _claim(port: int, fds: list[str]) -> str:
    """This worker's socket: the first whose lock no other worker holds
    (kept for the worker's life). On a reload Granian starts each new worker
    before it stops the old one (3.5 s later), so a new worker waits for its
    predecessor's socket rather than share another's and leave one without
    a door; after CLAIM_WAIT_S it shares the first."""
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        for index, fd in enumerate(fds):
            if _lock(port, f"door-{index}") is not None:
                return fd
        if time.monotonic() > deadline:
            log.warning(
                "no socket of the port is free after %.0f s: sharing the first", CLAIM_WAIT_S
            )
            return fds[0]
        time.sleep(0.05)


def _private_socket_path() -> Path:
    """A path for the app's socket in a new directory only we may enter (mode
    0700), in TMPDIR, or in /tmp when TMPDIR is too long for a socket's path
    (108 bytes on Linux), its workers' own sockets' included."""
    for parent in (None, "/tmp"):
        path = Path(tempfile.mkdtemp(prefix="model-router-app-", dir=parent)) / "app.sock"
        if len(os.fsencode(_worker_socket(path, PID_MAX))) < SOCKET_PATH_MAX:
            return path
        path.parent.rmdir()
    raise OSError(f"no temporary directory short enough for a socket's path: {path}")


def own_app_socket(shared: str, backlog: int) -> str:
    """This worker's own socket for its app, in place of the shared one.

    Granian binds the app's Unix socket (`shared`) in its main process, and
    every worker listens on it and takes connections from it: a door would
    hand a call to any worker's app, and a worker's death would fail calls
    other workers' doors had handed to it (a 503 where Granian alone fails
    only the dead worker's calls). Forked by Granian with that socket open,
    and before Granian's worker serves, the worker binds a socket of its own
    beside it and puts it on the shared socket's descriptor (dup2), which
    Granian's worker then listens on and serves.
    """
    descriptors = _bound_to(os.path.realpath(shared))  # Granian binds the resolved path
    if not descriptors:
        raise RuntimeError(
            f"Granian's socket for the app ({shared}) is not open in this worker: "
            "this Granian passes its workers their socket in a way the door does not know"
        )
    path = _worker_socket(Path(shared), os.getpid())
    path.unlink(missing_ok=True)  # a dead worker's, whose process id this one has
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as own:
        own.bind(str(path))
        # Listening from now on: the door's first requests wait in its queue
        # until Granian's worker serves.
        own.listen(backlog)
        own.setblocking(os.get_blocking(descriptors[0]))
        for fd in descriptors:
            os.dup2(own.fileno(), fd)
    return str(path)


def _worker_socket(shared: Path, pid: int) -> Path:
    """The socket of the worker `pid`, beside the shared one."""
    return shared.with_name(f"app-{pid}.sock")


def _bound_to(path: str) -> list[int]:
    """This process's descriptors of a Unix stream socket bound to `path`."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=fd)
        except OSError:
            continue  # the listing's own descriptor, closed by now
        try:
            unix_stream = (probe.family, probe.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
            if unix_stream and probe.getsockname() == path:
                found.append(fd)
        finally:
            probe.detach()
    return found


def start_door(settings: Settings) -> _core.Door | None:
    """In a worker `serve` started with the door on: the door on the port it
    inherited, handing to this worker's app, drained when the worker is told
    to stop. None otherwise."""
    fds = os.environ.get(FD_ENV)
    if fds is None:
        return None
    listeners = fds.split(",")
    # The authorities the app's client trusts (`ssl.create_default_context`).
    trusted = ssl.get_default_verify_paths()
    door = _core.Door(
        int(_claim(settings.port, listeners)),
        own_app_socket(os.environ[APP_SOCKET_ENV], settings.backlog),
        settings.max_connections,
        settings.header_read_timeout_ms,
        settings.max_body_bytes,
        settings.tls_cert,
        settings.tls_key,
        settings.tls_client_ca,
        trusted.cafile,
        trusted.capath,
    )
    # The door holds a copy of its own: the worker needs none of the
    # inherited sockets, and a process it started must not keep them open.
    for fd in listeners:
        os.close(int(fd))
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
