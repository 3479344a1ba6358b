"""herd's small HTTP client (common/http_get.py), on servers of the test's own on 127.0.0.1 that answer as
real ones may: kept connections the server has dropped, Connection: close, chunked bodies it does not
read, TLS trusted through a CA bundle, directly and through a CONNECT proxy with credentials."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.http_get import HttpClient, HttpError

_BODY = b"the footer bytes"


class _Server:
    """An HTTP/1.1 server on its own loop: /ok answers keep-alive, /drop answers and then closes the
    connection without saying so, /close says Connection: close (and, unlike a real server, would still
    answer on it: a client that sent another request there would show), /chunked sends a chunked body."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result()
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ")[1].decode()
                if path == "/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                    continue
                close = "\r\nConnection: close" if path == "/close" else ""
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(_BODY)}{close}\r\n\r\n".encode() + _BODY)
                await writer.drain()
                if path == "/drop":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)


class _ConnectProxy:
    """A CONNECT proxy that pipes bytes both ways and keeps what each tunnel request said."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result()
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


def _certificate_for_127_0_0_1(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the IP 127.0.0.1, and its key: the CA bundle is the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "herd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = folder / "ca.pem", folder / "key.pem"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_file, key_file


@pytest.fixture
def server() -> Iterator[_Server]:
    plain = _Server()
    yield plain
    plain.close()


def _client(certificates: ssl.SSLContext | None = None) -> HttpClient:
    return HttpClient(certificates=certificates or ssl.create_default_context(), timeout_s=10)


def test_a_kept_connection_is_reused_and_one_the_server_dropped_is_replaced_without_an_error(server: _Server):
    async def gets() -> list[bytes]:
        client = _client()
        url = f"http://127.0.0.1:{server.port}"
        bodies = [(await client.get(f"{url}/ok")).body, (await client.get(f"{url}/ok")).body]
        assert server.connections == 1  # kept alive
        bodies.append((await client.get(f"{url}/drop")).body)  # answered, then closed without a word
        await asyncio.sleep(0.1)
        bodies.append((await client.get(f"{url}/ok")).body)  # the dropped one fails first: once more, anew
        client.close()
        return bodies

    assert asyncio.run(gets()) == [_BODY] * 4
    assert server.connections == 2


def test_connection_close_is_honoured_and_a_chunked_body_is_left_to_the_caller(server: _Server):
    async def gets() -> None:
        client = _client()
        url = f"http://127.0.0.1:{server.port}"
        assert (await client.get(f"{url}/close")).body == _BODY
        assert (await client.get(f"{url}/ok")).body == _BODY
        assert server.connections == 2  # not sent on the connection the server said it closes
        with pytest.raises(HttpError, match="without a Content-Length"):
            await client.get(f"{url}/chunked")
        client.close()

    asyncio.run(gets())


def test_https_is_trusted_through_the_ca_bundle_directly_and_through_a_connect_proxy(tmp_path: Path):
    certificate, key = _certificate_for_127_0_0_1(tmp_path)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(certificate, key)
    tls_server, proxy = _Server(tls=serving), _ConnectProxy()
    trusting = ssl.create_default_context(cafile=str(certificate))
    url = f"https://127.0.0.1:{tls_server.port}/ok"

    async def gets() -> None:
        with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED"):
            await _client().get(url)  # the system's CAs do not know this certificate
        client = _client(trusting)
        assert (await client.get(url)).body == _BODY
        through = f"http://user:p%40ss@127.0.0.1:{proxy.port}"
        assert (await client.get(url, proxy=through)).body == _BODY
        assert (await client.get(url, proxy=through)).body == _BODY  # the tunnel is kept too
        client.close()

    try:
        asyncio.run(gets())
    finally:
        tls_server.close()
    assert len(proxy.requests) == 1
    tunnel = proxy.requests[0].decode()
    assert tunnel.startswith(f"CONNECT 127.0.0.1:{tls_server.port} HTTP/1.1\r\n")
    assert f"Proxy-Authorization: Basic {base64.b64encode(b'user:p@ss').decode()}" in tunnel
