"""Certificates and peers for the TLS tests (not a test module).

The certificates are made once per session with the ``openssl`` CLI: a test CA, a
server certificate it signs for ``localhost`` and 127.0.0.1, and a second CA that
signed nothing the server has (an untrusted chain for the client).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import danga
from danga.testing import run_until

_EXT = """subjectAltName=DNS:localhost,IP:127.0.0.1
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""
_CLIENT_EXT = _EXT.replace("subjectAltName=DNS:localhost,IP:127.0.0.1\n", "").replace(
    "serverAuth", "clientAuth")


def make_certs(where: Path) -> dict[str, Path]:
    """ca.pem, server.pem/server.key and client.pem/client.key (signed by ca.pem),
    other-ca.pem; skips the test with the reason when the openssl CLI is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make the test certificates "
                    "(apt-get install openssl)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True,
                       timeout=30)

    for name in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN=danga {name}", *ca_ext)
    for name, subject, ext in (("server", "/CN=localhost", _EXT),
                               ("client", "/CN=danga client", _CLIENT_EXT)):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        (where / f"{name}.cnf").write_text(ext)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
            f"{name}.cnf")
    names = ("ca", "other-ca", "server", "client")
    return {name: where / f"{name}.pem" for name in names} | {
        f"{name}.key": where / f"{name}.key" for name in ("server", "client")}


def server_context(certs: dict[str, Path], *, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["server"], certs["server.key"])
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_context(certs: dict[str, Path], ca: str = "ca") -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs[ca]))


class Thread(threading.Thread):
    """Runs a blocking peer; ``result`` is what it returned, ``error`` what it raised."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, loop: danga.Loop, timeout: float = 10.0) -> Any:
        """Run *loop* until the peer is done; its result (or its exception, raised)."""
        run_until(loop, lambda: not self.is_alive(), timeout)
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


def peer(target: Callable[[], Any]) -> Thread:
    thread = Thread(target)
    thread.start()
    return thread


def recv_exactly(conn: Any, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = conn.recv(min(n - len(got), 1 << 20))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def tls_client(port: int, ctx: ssl.SSLContext, *, hostname: str = "localhost",
               timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise
