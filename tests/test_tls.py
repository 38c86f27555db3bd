"""HTTPS with TLS 1.3 as the minimum, and mutual TLS, with real handshakes:
a certificate authority, a server and a client certificate made here (the
`cryptography` package), a real router, httpx with and without a client
certificate."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from conftest import EDGES, ROUTER, free_port

NO_CONNECTION = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


@pytest.fixture(params=EDGES)
def serve_tls(request, tmp_path, pki):
    """Start routers with the PKI's server certificate, on each edge."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> str:
        port = free_port()
        environ = {
            **os.environ,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "MODEL_ROUTER_WORKERS": "1",
            "MODEL_ROUTER_DATA_DIR": str(tmp_path / f"data-{port}"),
            "MODEL_ROUTER_ADMIN_KEY": "tls-admin-key-0123456789",
            "MODEL_ROUTER_TLS_CERT": str(pki["server.crt"]),
            "MODEL_ROUTER_TLS_KEY": str(pki["server.key"]),
            "MODEL_ROUTER_DOOR": "on" if request.param == "door" else "off",
            **env,
        }
        environ.pop("REDIS_URL", None)
        log = (tmp_path / f"server-{port}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [str(ROUTER), "serve"], env=environ, stdout=log, stderr=log, start_new_session=True
            )
        )
        url = f"https://127.0.0.1:{port}"
        wait_listening(port)
        return url

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def wait_listening(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            time.sleep(0.3)  # the TLS acceptor is up with the socket
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the router did not listen")


def test_https_with_tls_13_at_least(serve_tls, pki):
    url = serve_tls()
    ok = httpx.get(f"{url}/health", verify=ssl.create_default_context(cafile=pki["ca.crt"]))
    assert ok.status_code == 200 and ok.json()["status"] == "healthy"
    verify = ssl.create_default_context(cafile=pki["ca.crt"])
    with httpx.Client(http2=True, verify=verify) as h2:  # offered by ALPN
        assert h2.get(f"{url}/health").http_version == "HTTP/2"
    tls12 = ssl.create_default_context(cafile=pki["ca.crt"])
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", verify=tls12)
    with pytest.raises(NO_CONNECTION):  # plain HTTP is not served
        httpx.get(url.replace("https", "http") + "/health", timeout=2)


def test_mutual_tls_admits_only_clients_with_a_certificate_of_the_ca(serve_tls, pki):
    url = serve_tls(MODEL_ROUTER_TLS_CLIENT_CA=str(pki["ca.crt"]))
    anonymous = ssl.create_default_context(cafile=pki["ca.crt"])
    with pytest.raises(NO_CONNECTION):
        httpx.get(f"{url}/health", verify=anonymous)
    with_cert = ssl.create_default_context(cafile=pki["ca.crt"])
    with_cert.load_cert_chain(pki["client.crt"], pki["client.key"])
    assert httpx.get(f"{url}/health", verify=with_cert).status_code == 200


def test_tls_settings_are_checked_at_start(pki):
    from model_router.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env({"MODEL_ROUTER_TLS_CERT": str(pki["server.crt"])})
    with pytest.raises(SettingsError, match="no such file"):
        Settings.from_env({"MODEL_ROUTER_TLS_CERT": "/nope.crt", "MODEL_ROUTER_TLS_KEY": "/k"})
    with pytest.raises(SettingsError, match="needs MODEL_ROUTER_TLS_CERT"):
        Settings.from_env({"MODEL_ROUTER_TLS_CLIENT_CA": str(pki["ca.crt"])})
