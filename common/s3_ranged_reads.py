"""Many small ranged reads of S3 objects at once, for a third of the client's CPU: each GET goes to a URL
presigned by s3fs's own botocore client (its credentials, endpoint, addressing and region) and is sent by
aiohttp, which s3fs already runs on.

Why: planning reads a footer from each of up to 100,000 files, and through s3fs each GET spent 1.6 ms of the
driver's CPU in botocore's request pipeline; presigned over aiohttp, 0.6 ms (python -m bench footer_client).
Only the reads that succeed are answered here. Any other answer (missing, denied, throttled, a wrong region,
a dropped connection, a certificate aiohttp does not trust) leaves the read to s3fs, so that errors, region
redirects and what counts as transient stay exactly s3fs's.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import ssl
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import yarl
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode
from fsspec.asyn import sync

if TYPE_CHECKING:
    from s3fs import S3FileSystem

log = logging.getLogger(__name__)

_PROBE_KEY = "herd-address-probe"  # presigned only, never read: its URL shows where and how keys are addressed
_URL_LIFETIME_S = 3600  # a URL is used at once; an hour covers a clock skew of minutes
# botocore's own defaults: a server that stops answering is given up on after a minute, not five.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)

# One session (a pool of connections) per event loop: s3fs runs every call on fsspec's one loop, and a
# forked process gets a new loop, so it never shares a parent's sockets.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def read_ranges(
    fs: S3FileSystem, paths: Sequence[str], starts: Sequence[int], ends: Sequence[int], *, at_once: int
) -> list[bytes | None]:
    """Each `bucket/key` path's bytes [start, end), `at_once` reads at a time on s3fs's loop; None where this
    way did not get them and the caller should read them through s3fs."""
    loop = fs.loop
    return sync(loop, _read_all, fs, loop, list(paths), list(starts), list(ends), at_once)


async def _read_all(
    fs: S3FileSystem,
    loop: asyncio.AbstractEventLoop,
    paths: list[str],
    starts: list[int],
    ends: list[int],
    at_once: int,
) -> list[bytes | None]:
    session = _session(loop, at_once)
    limit = asyncio.Semaphore(at_once)
    buckets = {bucket: await _bucket_access(fs, bucket) for bucket in {path.split("/", 1)[0] for path in paths}}

    async def one(path: str, start: int, end: int) -> bytes | None:
        if end <= start:
            return b""
        bucket, key = path.split("/", 1)
        access = buckets[bucket]
        if access is None:
            return None
        async with limit:
            return await _read_one(session, access.url(key), access.proxy, start, end)

    results = await asyncio.gather(*(one(*read) for read in zip(paths, starts, ends, strict=True)))
    left = sum(result is None for result in results)
    if left:
        log.debug("%d of %d ranged reads are left to s3fs", left, len(results))
    return list(results)


@dataclass(frozen=True)
class _BucketAccess:
    url: Callable[[str], str]  # a key's presigned GET URL
    proxy: str | None  # the proxy botocore would use for the endpoint (HTTPS_PROXY, NO_PROXY...)


async def _bucket_access(fs: S3FileSystem, bucket: str) -> _BucketAccess | None:
    """Presigned GET URLs of keys in `bucket` as s3fs's client presigns them, for a fraction of its CPU (its
    endpoint rules and event hooks cost ~1 ms a URL): the client presigns one probe key, whose URL gives the
    address (endpoint, path or virtual-host style) and the signing region, and botocore's SigV4 query signer
    signs each key with the credentials of the session that client was made from (herd gives s3fs no keys of
    its own). The proxy is looked up once too (aiohttp's trust_env does it per request: 0.7 ms). None when
    that cannot be done: every read is then s3fs's."""
    try:
        probe = urlsplit(await fs._url(f"{bucket}/{_PROBE_KEY}", expires=_URL_LIFETIME_S))
        credentials = await fs.session.get_credentials()
        frozen = await credentials.get_frozen_credentials() if credentials is not None else None
    except Exception:  # noqa: BLE001 - s3fs's own reads will name what is wrong
        return None
    given = dict(parse_qsl(probe.query))
    if frozen is None or given.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or not probe.path.endswith(_PROBE_KEY):
        return None
    _, _, region, service, _ = given["X-Amz-Credential"].split("/")
    address = urlunsplit((probe.scheme, probe.netloc, probe.path.removesuffix(_PROBE_KEY), "", ""))
    signer = S3SigV4QueryAuth(frozen, service, region, expires=_URL_LIFETIME_S)

    def sign(key: str) -> str:
        request = AWSRequest(method="GET", url=address + percent_encode(key, safe="/~"))  # as botocore quotes a key
        signer.add_auth(request)
        return request.url

    bypassed = probe.hostname is not None and urllib.request.proxy_bypass(probe.hostname)
    return _BucketAccess(url=sign, proxy=None if bypassed else urllib.request.getproxies().get(probe.scheme))


async def _read_one(session: aiohttp.ClientSession, url: str, proxy: str | None, start: int, end: int) -> bytes | None:
    try:
        # encoded=True: sent exactly as signed (yarl would otherwise requote the key, e.g. a%3Db as a=b,
        # and the signature would no longer match on a real S3).
        wanted = {"Range": f"bytes={start}-{end - 1}"}
        async with session.get(yarl.URL(url, encoded=True), headers=wanted, proxy=proxy) as response:
            if response.status not in (200, 206):
                return None
            body = await response.read()
    except Exception:  # noqa: BLE001 - whatever failed here, s3fs reads it again and names its error
        return None
    if response.status == 206 and len(body) == end - start:
        return body
    if response.status == 200 and start == 0 and len(body) == end:  # the whole object, asked whole
        return body
    return None


def _session(loop: asyncio.AbstractEventLoop, at_once: int) -> aiohttp.ClientSession:
    session = _sessions.get(loop)
    if session is None or session.closed:
        # botocore's trust: AWS_CA_BUNDLE when set, else the system's.
        certificates = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=at_once, ssl=certificates),
            timeout=_TIMEOUT,
            auto_decompress=False,  # the stored bytes, as botocore gives them, even with a Content-Encoding
        )
        _sessions[loop] = session
        atexit.register(_close, loop, session)
    return session


def _close(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
    """At exit, as s3fs closes its own client: on the loop if it still runs, else the sockets directly."""
    if session.closed:
        return
    if loop.is_running():
        try:
            sync(loop, session.close, timeout=1)
            return
        except Exception:  # noqa: BLE001 - exiting; the sockets are closed below
            pass
    connector = session.connector
    if connector is not None:
        connector._close()
