"""A fake Google Cloud Storage for TensorFlow's own ``gs://`` client, in one test process.

TensorFlow's GCS filesystem has its endpoints built in (``https://www.googleapis.com/storage/v1/``
for metadata, ``https://storage.googleapis.com/`` for object bytes) and no variable to point it
at an emulator. It does go through libcurl, which honours ``HTTPS_PROXY``, and it trusts the CA
bundle in ``CURL_CA_BUNDLE``. So this serves an HTTPS proxy on 127.0.0.1 that answers every
``CONNECT`` itself: it terminates TLS with a certificate for those two hosts signed by a CA made
for the test, and answers the few JSON-API and media requests the client sends (object
metadata, listing, bucket metadata, ranged object reads) from a local directory, one directory
per bucket. Every request is logged with the bytes it returned, so a test can count what a
client fetched. ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` spares the client the metadata server.

A client must start after ``env()`` is in its environment (TensorFlow reads some of it when it
starts), so tests run it in a worker process. Needs the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import socketserver
import ssl
import threading
import time
import urllib.parse
from typing import Any

HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def _certificates(directory: str) -> tuple[str, str, str]:
    """(CA certificate, server certificate, server key) files for ``HOSTS``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "highnoon test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths  # type: ignore[return-value]


class _Api(http.server.BaseHTTPRequestHandler):
    """The GCS requests TensorFlow's client makes, answered from ``server.root``."""

    protocol_version = "HTTP/1.1"
    fake: FakeGcs

    def log_message(self, *args: Any) -> None:
        del args

    def do_GET(self) -> None:  # http.server calls do_<METHOD>
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        host = (self.headers.get("Host") or "").split(":")[0]
        if host == "storage.googleapis.com":
            bucket, _, name = path.lstrip("/").partition("/")
            return self._media(bucket, name)
        if path.startswith("/storage/v1/b/"):
            bucket, _, rest = path[len("/storage/v1/b/") :].partition("/")
            if rest.startswith("o/"):
                return self._metadata(bucket, rest[2:])
            if rest == "o":
                return self._list(bucket, query)
            if rest == "" and os.path.isdir(self._file(bucket, "")):
                return self._reply(200, b'{"location": "US"}', path)
        return self._reply(404, b'{"error": {"code": 404}}', path)

    def _file(self, bucket: str, name: str) -> str:
        return os.path.join(self.fake.root, bucket, name)

    def _metadata(self, bucket: str, name: str) -> None:
        file = self._file(bucket, name)
        if not os.path.isfile(file):
            return self._reply(404, b'{"error": {"code": 404}}', name)
        meta = {"size": str(os.path.getsize(file)), "generation": "1",
                "updated": "2026-01-01T00:00:00.000Z"}  # fmt: skip
        return self._reply(200, json.dumps(meta).encode(), f"meta {name}")

    def _list(self, bucket: str, query: dict[str, str]) -> None:
        base, prefix = self._file(bucket, ""), query.get("prefix", "")
        names = sorted(
            os.path.relpath(os.path.join(root, n), base).replace(os.sep, "/")
            for root, _, files in os.walk(base)
            for n in files
        )
        names = [n for n in names if n.startswith(prefix)]
        body: dict[str, Any] = {}
        delimiter = query.get("delimiter")
        if delimiter:
            tails = [n[len(prefix) :] for n in names]
            body["prefixes"] = sorted(
                {prefix + t.split(delimiter)[0] + delimiter for t in tails if delimiter in t}
            )
            names = [n for n, t in zip(names, tails) if delimiter not in t]
        names = names[: int(query.get("maxResults", 1000))]
        if names:
            body["items"] = [{"name": n} for n in names]
        return self._reply(200, json.dumps(body).encode(), f"list {prefix}")

    def _media(self, bucket: str, name: str) -> None:
        file, name = self._file(bucket, name), f"media {name}"
        if not os.path.isfile(file):
            return self._reply(404, b"", name)
        with open(file, "rb") as f:
            data = f.read()
        ranged = self.headers.get("Range")
        if not ranged:
            return self._reply(200, data, name)
        first, last = (int(x) for x in ranged.split("=")[1].split("-"))
        if first >= len(data):
            return self._reply(416, b"", name)
        part = data[first : min(last, len(data) - 1) + 1]
        extra = {"Content-Range": f"bytes {first}-{first + len(part) - 1}/{len(data)}"}
        return self._reply(206, part, name, extra)

    def _reply(self, code: int, body: bytes, what: str, headers: dict | None = None) -> None:
        if self.fake.latency_s:
            time.sleep(self.fake.latency_s)  # a bucket's round trip (benches)
        with self.fake.lock:
            self.fake.requests.append({"what": what, "code": code, "bytes": len(body)})
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Tunnel(socketserver.StreamRequestHandler):
    """One proxy connection: accept ``CONNECT``, then speak TLS + HTTP as the GCS hosts."""

    server: _ProxyServer

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        if not line.startswith("CONNECT ") or line.split()[1].split(":")[0] not in HOSTS:
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        tls = self.server.context.wrap_socket(self.connection, server_side=True)
        handler = type("Api", (_Api,), {"fake": self.server.fake})
        handler(tls, self.client_address, self.server)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    context: ssl.SSLContext
    fake: FakeGcs


class FakeGcs:
    """Serves ``root/<bucket>/<object>`` as ``gs://<bucket>/<object>`` to a client whose
    environment holds ``env()``; ``requests`` logs what it answered (``what``, ``code``,
    ``bytes``). ``latency_s`` delays every answer (a bucket's round trip, for benches)."""

    def __init__(self, root: str, cert_dir: str, *, latency_s: float = 0.0) -> None:
        self.root = root
        self.latency_s = float(latency_s)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.ca, cert, key = _certificates(cert_dir)
        self._server = _ProxyServer(("127.0.0.1", 0), _Tunnel)
        self._server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server.context.load_cert_chain(cert, key)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def env(self, **extra: str) -> dict[str, str]:
        """The variables that send a TensorFlow client's ``gs://`` requests here."""
        proxy = f"http://127.0.0.1:{self._server.server_address[1]}"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": "",
            "no_proxy": "",
            "CURL_CA_BUNDLE": self.ca,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "NO_GCE_CHECK": "true",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "0",
            **extra,
        }

    def bytes_served(self, suffix: str) -> int:
        """Object bytes returned for objects whose name ends with ``suffix``."""
        with self.lock:
            return sum(
                r["bytes"] for r in self.requests if r["code"] in (200, 206)
                and r["what"].startswith("media ") and r["what"].endswith(suffix)
            )  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
