"""`model-router serve | config export/import | keys create`.

The config and keys commands work on the store directly (the same one the
service uses, chosen by the same environment), so they need no running server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from . import auth, door
from . import types as t
from .catalog import KEYS, Catalog, utcnow
from .config_io import export_config, import_config
from .engine.write_counter import WriteCounter, counter_path
from .http import ApiError
from .settings import Settings, SettingsError
from .store import StoreUnavailable, open_store
from .telemetry.logging import granian_log_config

T = TypeVar("T")


def _with_catalog(settings: Settings, work: Callable[[Catalog], Awaitable[T]]) -> T:
    async def run() -> T:
        store = open_store(settings)
        # An instance running on this machine and port routes under our writes
        # from its next request (a SQLite store publishes nothing).
        path = counter_path(settings.port)
        writes = WriteCounter(path) if path.exists() else None
        try:
            return await work(Catalog(store, on_write=writes.bump if writes else lambda: None))
        finally:
            await store.close()
            if writes is not None:
                writes.close()

    return asyncio.run(run())


def _print_json(obj: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(obj)).decode() + "\n")


async def ensure_admin_key(catalog: Catalog, settings: Settings) -> str | None:
    """Never silently open: with no MODEL_ROUTER_ADMIN_KEY and no admin key in
    the store yet, mint one and return it (the caller prints it once)."""
    if settings.admin_key:
        return None
    if any(k.role == "admin" and k.workspace_id is None for k in await catalog.all(KEYS)):
        return None
    key, record = auth.mint_key("admin", None, "bootstrap admin (generated at start)", utcnow())
    await catalog.apply([KEYS.put(record.id, record)])
    return key


def _granian(
    target: str,
    interface: str,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    shutdown_grace_s: int | None = None,
    settings: Settings | None = None,
    uds: Path | None = None,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve `target` with Granian; the router's `settings` add its limits
    and TLS (the mock provider's `tls` is its certificate and key alone). On
    `uds`, behind the door, Granian serves only the door: the edge's TLS and
    timeouts are the door's."""
    from granian import Granian
    from granian.constants import Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings

    limits: dict[str, Any] = {}
    if settings is not None:
        limits = {
            "backlog": settings.backlog,
            # Connections each worker serves at once. Granian's default
            # (backlog / workers) lets a few thousand idle sockets take them all.
            "backpressure": settings.max_connections,
            # A client that sends its headers slower than this is cut off
            # (slowloris); an idle kept-alive connection holds no worker.
            "http1_settings": HTTP1Settings(header_read_timeout=settings.header_read_timeout_ms),
        }
        if uds is None:
            limits |= {
                "ssl_cert": settings.tls_cert,
                "ssl_key": settings.tls_key,
                "ssl_protocol_min": SSLProtocols.tls13,
                "ssl_ca": settings.tls_client_ca,
                "ssl_client_verify": settings.tls_client_ca is not None,
            }
    if tls is not None:
        limits |= {"ssl_cert": tls[0], "ssl_key": tls[1]}
    where: dict[str, Any] = {"uds": uds} if uds is not None else {"address": host, "port": port}
    Granian(
        target,
        factory=True,
        **where,
        interface=Interfaces(interface),
        workers=workers,
        loop=Loops.uvloop,
        log_level=log_level if log_level != "critical" else "error",  # type: ignore[arg-type]
        log_dictconfig=granian_log_config(log_level),
        respawn_failed_workers=True,
        # On SIGTERM a worker stops accepting and finishes what it serves
        # (streams included); past the grace period it is killed.
        workers_kill_timeout=shutdown_grace_s,
        **limits,
    ).serve()


def serve(settings: Settings) -> int:
    public: list[socket.socket] = []  # the door's port, open while the workers run
    app_socket: Path | None = None
    try:
        # Held while serving: Granian's workers and the door's share the port
        # (SO_REUSEPORT), where a second instance must not join them.
        instance = door.claim_port(settings.host, settings.port)
        if settings.door:
            public, app_socket = door.bind(settings)
    except OSError as exc:
        print(
            f"model-router: cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
            "(another model-router or another program holds it); not starting",
            file=sys.stderr,
        )
        return 1
    if settings.unattributed_clients:
        print(
            f"model-router: warning: per-address limits are on and {settings.host} is not "
            "loopback, but MODEL_ROUTER_CLIENT_ADDRESS_HEADER is unset: behind an ingress or "
            "load balancer every client shares its address (and its limits). Set it to the "
            "header the ingress appends (X-Forwarded-For), or set "
            "MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE=0 and MODEL_ROUTER_MAX_IN_FLIGHT_PER_CLIENT=0",
            file=sys.stderr,
            flush=True,
        )
    # Every worker writes its Prometheus samples here; /metrics merges them.
    metrics_dir = tempfile.mkdtemp(prefix="model-router-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        generated = _with_catalog(settings, lambda c: ensure_admin_key(c, settings))
    except StoreUnavailable as exc:
        # Serve anyway: alive, and ready once the store answers and a config loads.
        print(f"model-router: the state store is unreachable ({exc})", file=sys.stderr)
        generated = None
    if generated:
        print(
            "\n  No MODEL_ROUTER_ADMIN_KEY was set and the store had no admin key, so one was\n"
            "  generated. It is shown this once; keep it:\n\n"
            f"    {generated}\n",
            file=sys.stderr,
            flush=True,
        )
    try:
        _granian(
            "model_router.app:create_app",
            settings.interface,
            settings.host,
            settings.port,
            settings.workers,
            settings.log_level,
            settings.shutdown_grace_s,
            settings,
            app_socket,
        )
    finally:
        # The workers are gone: what they shared would stay in /tmp each run.
        for listener in public:
            listener.close()
        os.close(instance)
        if app_socket is not None:
            shutil.rmtree(app_socket.parent, ignore_errors=True)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def mock_provider(args: argparse.Namespace) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("mock-provider: --tls-cert and --tls-key go together")
    os.environ.update(
        MOCK_FLAVOR=args.flavor,
        MOCK_LATENCY_MS=str(args.latency_ms),
        MOCK_JITTER_MS=str(args.jitter_ms),
        MOCK_ERROR_RATE=str(args.error_rate),
        MOCK_STREAM_CHUNKS=str(args.stream_chunks),
    )
    _granian(
        "model_router.mock_provider:create_app",
        "asgi",
        args.host,
        args.port,
        args.workers,
        "warning",
        tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
    )


def config_export(settings: Settings, file: Path | None) -> None:
    exported = _with_catalog(settings, export_config)
    data = msgspec.json.format(msgspec.json.encode(exported)) + b"\n"
    if file is None:
        sys.stdout.buffer.write(data)
    else:
        file.write_bytes(data)


def config_import(settings: Settings, file: Path, mode: str, dry_run: bool) -> int:
    try:
        document = msgspec.json.decode(file.read_bytes(), type=t.ConfigImport)
    except (OSError, msgspec.MsgspecError) as exc:
        print(f"cannot import {file}: {exc}", file=sys.stderr)
        return 2
    try:
        result = _with_catalog(
            settings,
            lambda c: import_config(c, document.config, mode, dry_run),  # type: ignore[arg-type]
        )
    except ApiError as err:
        _print_json({"error": {"type": err.type, "message": err.message, "details": err.details}})
        return 1
    _print_json(result)
    return 0


def keys_create(settings: Settings, role: str, workspace: str | None, name: str | None) -> None:
    key, record = auth.mint_key(role, workspace, name, utcnow())  # type: ignore[arg-type]
    _with_catalog(settings, lambda c: c.apply([KEYS.put(record.id, record)]))
    _print_json({"id": record.id, "role": role, "workspaceId": workspace, "key": key})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="model-router", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the service (Granian, MODEL_ROUTER_WORKERS workers)")
    config = sub.add_parser("config", help="export or import the config").add_subparsers(
        dest="action", required=True
    )
    export = config.add_parser("export", help="write the config as JSON (stdout or FILE)")
    export.add_argument("file", nargs="?", type=Path)
    imp = config.add_parser("import", help="import a config file, all or nothing")
    imp.add_argument("file", type=Path)
    imp.add_argument("--dry-run", action="store_true", help="report what would change")
    imp.add_argument("--mode", choices=("merge", "replace"), default="merge")
    mock = sub.add_parser(
        "mock-provider", help="a model provider on loopback, for trials and tests"
    )
    mock.add_argument("--port", type=int, required=True)
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--flavor", choices=("openai", "anthropic", "azure"), default="openai")
    mock.add_argument("--latency-ms", type=float, default=0.0)
    mock.add_argument("--jitter-ms", type=float, default=0.0)
    mock.add_argument(
        "--error-rate", type=float, default=0.0, help="share of requests that get a 500"
    )
    mock.add_argument("--stream-chunks", type=int, default=8)
    mock.add_argument("--workers", type=int, default=1)
    mock.add_argument("--tls-cert", type=Path, help="serve https:// with this certificate (PEM)")
    mock.add_argument("--tls-key", type=Path, help="...and its key (PEM, PKCS#8)")
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--role", required=True, choices=("admin", "operator", "agent", "viewer"))
    create.add_argument("--workspace", help="scope the key to one workspace")
    create.add_argument("--name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "mock-provider":
        mock_provider(args)
        return 0
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"model-router: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings)
    if args.command == "config" and args.action == "export":
        config_export(settings, args.file)
    elif args.command == "config":
        return config_import(settings, args.file, args.mode, args.dry_run)
    elif args.command == "keys":
        if args.workspace is not None:
            args.workspace = msgspec.convert(args.workspace, t.Id)
        keys_create(settings, args.role, args.workspace, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
