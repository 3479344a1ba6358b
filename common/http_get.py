"""HTTP/1.1 GETs on kept-alive connections, for the requests planning makes by the thousand (Parquet
footers, listing pages) to URLs it has signed itself (common/s3_presigned.py).

Why not aiohttp: its generality (cookies, redirects, tracing, streamed bodies) cost ~0.15 ms of CPU a
request more: a footer read, signed, sent and parsed, costs 0.45 ms through aiohttp and 0.32 ms through
this (`python -m bench footer_client`), 13 s of CPU at 100,000 footers.
It does only what those requests need: a body of a stated Content-Length, on a connection kept for the
next request unless the server closes it. Anything else (a chunked body, a head over 64 kB, a connection
closed early, a timeout) raises HttpError, and the caller makes that request another way. Through a
proxy, an http:// URL is asked of the proxy in absolute form and an https:// one goes through a
CONNECT tunnel, as curl and botocore do.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpError(Exception):
    """No usable answer: the connection failed, timed out, or the answer was not one this client reads."""


# What may go wrong with one request, all raised as HttpError (asyncio.IncompleteReadError is an
# EOFError, ssl.SSLError an OSError, a head over the StreamReader's 64 kB limit a LimitOverrunError).
# asyncio.TimeoutError is TimeoutError from Python 3.11 on, a class of its own before.
_FAILURES = (HttpError, OSError, EOFError, ValueError, TimeoutError, asyncio.TimeoutError, asyncio.LimitOverrunError)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def host_header(url: SplitResult) -> str:
    """The Host header for `url`: its host, and its port unless the scheme's default (as botocore signs
    it: a URL signed for host:443 would not match a request for host)."""
    host = _bracketed(url.hostname or "")
    if url.port is not None and url.port != _DEFAULT_PORTS.get(url.scheme):
        host = f"{host}:{url.port}"
    return host


class HttpClient:
    """GETs on one event loop, with the connections it keeps open between them (no limit of its own:
    each caller bounds how many requests it makes at once)."""

    def __init__(self, *, certificates: ssl.SSLContext, timeout_s: float) -> None:
        self._certificates = certificates
        self._timeout_s = timeout_s
        self._idle: dict[tuple[str, str, str | None], list[asyncio.StreamWriter]] = {}
        self._readers: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}

    async def get(self, url: str, headers: Mapping[str, str] | None = None, *, proxy: str | None = None) -> Response:
        """The answer to GET `url` (sent exactly as given, already percent-encoded), whatever its status."""
        target = urlsplit(url)
        if target.scheme not in _DEFAULT_PORTS or not target.hostname:
            raise HttpError(f"not an http(s) URL: {url[:100]}")
        host = host_header(target)
        through_proxy = bool(proxy) and target.scheme == "http"  # https goes through a tunnel instead
        # Asked of a proxy, a plain-HTTP request names the whole URL; otherwise only the path.
        path = url if through_proxy else target.path + (f"?{target.query}" if target.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if through_proxy:
            lines += _proxy_authorization(proxy or "")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        idle = self._idle.setdefault((target.scheme, host, proxy), [])
        # A kept connection the server has closed meanwhile fails before any answer: then once more, anew.
        for reused in (True, False) if idle else (False,):
            writer = idle.pop() if reused and idle else None
            try:
                # As botocore: a time to connect, then a time for the answer (wait_for, not Python
                # 3.11's asyncio.timeout: herd runs on 3.10 too).
                writer = writer or await asyncio.wait_for(self._open(target, proxy), self._timeout_s)
                writer.write(request)
                response, keep = await asyncio.wait_for(_response(self._readers[writer]), self._timeout_s)
            except _FAILURES as error:
                self._forget(writer)
                if reused and isinstance(error, (ConnectionError, asyncio.IncompleteReadError)):
                    continue
                raise HttpError(f"GET {target.hostname}: {type(error).__name__}: {error}") from error
            except BaseException:  # cancelled mid-request: the connection's next bytes are this answer's
                self._forget(writer)
                raise
            if keep:
                idle.append(writer)
            else:
                self._forget(writer)
            return response
        raise AssertionError("unreachable: the last try returns or raises")

    def close(self) -> None:
        """Closes every kept connection (their transports close on the loop's next turn)."""
        for writer in list(self._readers):
            self._forget(writer)
        self._idle.clear()

    def _forget(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            self._readers.pop(writer, None)
            writer.close()

    async def _open(self, target: SplitResult, proxy: str | None) -> asyncio.StreamWriter:
        port = target.port or _DEFAULT_PORTS[target.scheme]
        tls = self._certificates if target.scheme == "https" else None
        if not proxy:
            reader, writer = await asyncio.open_connection(target.hostname, port, ssl=tls)
        else:
            via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if via.scheme != "http":  # a proxy spoken to over TLS: s3fs makes these requests
                raise HttpError(f"a {via.scheme}:// proxy")
            reader, writer = await asyncio.open_connection(via.hostname, via.port or 80)
            if tls is not None:
                try:
                    if not hasattr(writer, "start_tls"):  # Python 3.10: s3fs makes these requests
                        raise HttpError("TLS through a proxy's tunnel needs Python 3.11")
                    await _tunnel(reader, writer, f"{_bracketed(target.hostname or '')}:{port}", proxy)
                    await writer.start_tls(tls, server_hostname=target.hostname)
                except BaseException:
                    writer.close()
                    raise
        self._readers[writer] = reader
        return writer


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, proxy: str) -> None:
    """Asks the proxy on this connection for a tunnel to `address` (host:port)."""
    lines = [f"CONNECT {address} HTTP/1.1", f"Host: {address}", *_proxy_authorization(proxy)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = _status(head.split(b"\r\n", 1)[0].decode("latin-1"))
    if status != 200:
        raise HttpError(f"the proxy refused a tunnel to {address}: {status}")


async def _response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    """The answer on `reader`, and whether its connection may carry another request."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    status = _status(status_line)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(f"a header line without a colon: {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers or "content-length" not in headers:
        raise HttpError(f"a body without a Content-Length (status {status})")
    body = await reader.readexactly(int(headers["content-length"]))
    keep = status_line.startswith("HTTP/1.1 ") and headers.get("connection", "").lower() != "close"
    return Response(status, headers, body), keep


def _status(line: str) -> int:
    version, _, rest = line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise HttpError(f"not an HTTP/1.x answer: {line[:100]!r}")
    return int(rest[:3])


def _bracketed(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname  # an IPv6 address


def _proxy_authorization(proxy: str) -> list[str]:
    """Basic credentials, when the proxy's URL carries them (http://user:password@proxy:3128)."""
    via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if via.username is None:
        return []
    pair = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
    return [f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}"]
