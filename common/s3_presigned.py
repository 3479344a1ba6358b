"""The S3 requests planning makes by the thousand, for a fraction of the client's CPU: the ranged reads
of Parquet footers and the pages of a folder's listing, each sent by herd's own small HTTP client
(common/http_get.py) to a URL signed exactly as s3fs's own botocore client presigns it (its credentials,
endpoint, addressing and region; checked against a URL that client presigns).

Why: planning 100,000 files on S3 reads a footer from each and lists a hundred pages of a thousand keys;
through s3fs each footer read spent ~3 ms of the driver's CPU in botocore's request pipeline, this way
~0.3 ms (python -m bench footer_client), and botocore parsed a listing at ~0.2 ms a key, ElementTree here
at ~0.04 ms (python -m bench billion lists 100,000 keys in 7 s, through s3fs in 15-23 s). Only what
succeeds is answered here. Any other answer (missing, denied, throttled, a wrong region, a dropped
connection, a certificate not trusted, a body the client does not read) leaves the request to s3fs, so
that errors, region redirects and what counts as transient stay exactly s3fs's.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import hmac
import logging
import os
import ssl
import time
import urllib.request
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote_plus, urlsplit
from xml.etree import ElementTree

from botocore.utils import percent_encode
from fsspec.asyn import sync

from common.http_get import HttpClient, HttpError, host_header

if TYPE_CHECKING:
    from s3fs import S3FileSystem

log = logging.getLogger(__name__)

_PROBE_KEY = "herd-address-probe"  # presigned only, never read: its URL shows where and how keys are addressed
_KEYS_A_PAGE = 1000  # S3's most in one page of a listing
_URL_LIFETIME_S = 3600  # a URL is used at once; an hour covers a clock skew of minutes
# botocore's own defaults (60 s to connect, 60 s to read): a server that stops answering is given up on.
_TIMEOUT_S = 60

_not_reproduced: set[str] = set()  # buckets whose presigned URLs _BucketAccess could not reproduce
# One client (a pool of connections) per event loop: s3fs runs every call on fsspec's one loop, and a
# forked process gets a new loop, so it never shares a parent's sockets.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HttpClient] = weakref.WeakKeyDictionary()


def read_ranges(
    fs: S3FileSystem, paths: Sequence[str], starts: Sequence[int], ends: Sequence[int], *, at_once: int
) -> list[bytes | None]:
    """Each `bucket/key` path's bytes [start, end), `at_once` reads at a time on s3fs's loop; None where this
    way did not get them and the caller should read them through s3fs."""
    return sync(fs.loop, _read_all, fs, list(paths), list(starts), list(ends), at_once)


def find(fs: S3FileSystem, path: str) -> dict[str, dict[str, Any]] | None:
    """Every object under the folder `bucket/prefix`, as s3fs's `find(path, detail=True)` names and
    describes them (name, size, type, ETag); None when this way could not list it all."""
    return sync(fs.loop, _find, fs, path)


async def _read_all(
    fs: S3FileSystem, paths: list[str], starts: list[int], ends: list[int], at_once: int
) -> list[bytes | None]:
    client = _client(fs.loop)
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
            return await _read_one(client, access, access.object_url(key), start, end)

    results = await asyncio.gather(*(one(*read) for read in zip(paths, starts, ends, strict=True)))
    left = sum(result is None for result in results)
    if left:
        log.debug("%d of %d ranged reads are left to s3fs", left, len(results))
    return list(results)


async def _read_one(client: HttpClient, access: _BucketAccess, url: str, start: int, end: int) -> bytes | None:
    try:
        response = await client.get(url, {"Range": f"bytes={start}-{end - 1}"}, proxy=access.proxy)
    except HttpError:  # s3fs reads it again and names its error
        return None
    # The stored bytes, as botocore gives them, even under a Content-Encoding: nothing is decompressed.
    body = response.body
    if response.status == 206 and len(body) == end - start:
        return body
    if response.status == 200 and start == 0 and len(body) == end:  # the whole object, asked whole
        return body
    return None


async def _find(fs: S3FileSystem, path: str) -> dict[str, dict[str, Any]] | None:
    bucket, _, key = path.strip("/").partition("/")
    access = await _bucket_access(fs, bucket)
    if access is None:
        return None
    client = _client(fs.loop)
    # s3fs lists the folder's prefix with a slash, so that "in" does not take "input/..." too.
    query = {
        "list-type": "2",
        "prefix": f"{key}/" if key else "",
        "encoding-type": "url",
        "max-keys": str(_KEYS_A_PAGE),
    }
    found: dict[str, dict[str, Any]] = {}
    while True:
        try:
            response = await client.get(access.listing_url(query), proxy=access.proxy)
            if response.status != 200:
                return None
            page = ElementTree.fromstring(response.body)
            # Tags in the page's namespace, spelled out: ElementTree's C code finds an exact tag itself and
            # hands a wildcard ({*}Key) to its Python path engine, which took a third of the listing's CPU.
            ns = page.tag[: page.tag.index("}") + 1] if page.tag.startswith("{") else ""
            for entry in page.findall(f"{ns}Contents"):
                # encoding-type=url: keys come URL-encoded (an XML page cannot hold every character a key
                # may have), decoded as botocore decodes them.
                name = f"{bucket}/{unquote_plus(entry.findtext(f'{ns}Key', ''))}"
                size = int(entry.findtext(f"{ns}Size", "0"))
                etag = entry.findtext(f"{ns}ETag", "")
                found[name] = {"name": name, "Key": name, "type": "file", "size": size, "Size": size, "ETag": etag}
            truncated = page.findtext(f"{ns}IsTruncated") == "true"
            token = page.findtext(f"{ns}NextContinuationToken")
        except Exception:  # noqa: BLE001 - s3fs lists it again and names its error
            return None
        if not truncated:
            return found
        if not token:
            return None
        query["continuation-token"] = token


class _BucketAccess:
    """Presigned GET URLs in one bucket exactly as s3fs's client presigns them, for a fraction of its CPU
    (botocore's presigning runs its endpoint rules and event hooks, ~1 ms a URL, and its signer ~0.2 ms).
    The client presigns one probe key; its URL gives the address (endpoint, path or virtual-host style),
    the signing region and the access key; each URL is then signed here with SigV4 for query parameters,
    with the credentials of the session that client was made from (herd gives s3fs no keys of its own).
    The probe's own signature is recomputed first: if this signer does not reproduce it exactly (another
    signing scheme, a token it does not carry), it is not used. The proxy is looked up once too (a lookup
    per request, as aiohttp's trust_env makes, cost 0.7 ms)."""

    def __init__(self, probe: SplitResult, secret_key: str, token: str | None) -> None:
        given = dict(parse_qsl(probe.query))
        self.access_key, _, self.region, self.service, _ = given["X-Amz-Credential"].split("/")
        self.secret_key = secret_key
        self.token = token
        self.scheme, self.netloc = probe.scheme, probe.netloc
        self.host = host_header(probe)  # what the request's Host header will say, the one signed header
        path = probe.path.removesuffix(_PROBE_KEY)
        self.key_prefix = path
        # The bucket itself: /bucket on a path-style endpoint, / on a virtual-host one.
        self.bucket_path = path.rstrip("/") or "/"
        self._signing_keys: dict[str, bytes] = {}
        bypassed = probe.hostname is not None and urllib.request.proxy_bypass(probe.hostname)
        self.proxy = None if bypassed else urllib.request.getproxies().get(probe.scheme)
        stamp, signature = given.get("X-Amz-Date", ""), given.get("X-Amz-Signature", "")
        ours = dict(parse_qsl(urlsplit(self._url(probe.path, {}, stamp)).query)) if stamp else {}
        self.reproduces_probe = bool(signature) and ours == given

    def object_url(self, key: str) -> str:
        return self._url(self.key_prefix + percent_encode(key, safe="/~"), {})  # as botocore quotes a key

    def listing_url(self, query: dict[str, str]) -> str:
        return self._url(self.bucket_path, query)

    def _url(self, path: str, query: dict[str, str], stamp: str | None = None) -> str:
        """`path` (percent-encoded as it will be sent) and `query`, signed (AWS Signature Version 4, query
        parameters, the host the only signed header, the payload unsigned, as S3 presigned URLs are)."""
        stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        canonical_query = self._canonical_query(tuple(query.items()), stamp, scope)
        canonical = f"GET\n{path}\n{canonical_query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(stamp[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self.scheme}://{self.netloc}{path}?{canonical_query}&X-Amz-Signature={signature}"

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few entries, as long-lived as the bucket's access
    def _canonical_query(self, query: tuple[tuple[str, str], ...], stamp: str, scope: str) -> str:
        """The query with the signing parameters, canonically encoded and sorted: the same for every
        object's URL signed in the same second, as planning signs them (~35 µs of a URL's ~50)."""
        signing = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{self.access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(_URL_LIFETIME_S),
            "X-Amz-SignedHeaders": "host",
        }
        if self.token:
            signing["X-Amz-Security-Token"] = self.token
        pairs = [*query, *signing.items()]
        return "&".join(
            f"{name}={value}" for name, value in sorted((_quoted(name), _quoted(value)) for name, value in pairs)
        )

    def _signing_key(self, day: str) -> bytes:
        if day not in self._signing_keys:
            key = f"AWS4{self.secret_key}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._signing_keys[day] = key
        return self._signing_keys[day]


def _quoted(text: str) -> str:
    return quote(text, safe="-_.~")  # SigV4's URI encoding: unreserved characters only


async def _bucket_access(fs: S3FileSystem, bucket: str) -> _BucketAccess | None:
    """None when s3fs's client presigns in a way _BucketAccess does not reproduce, or has no credentials:
    every request is then s3fs's."""
    try:
        probe = urlsplit(await fs._url(f"{bucket}/{_PROBE_KEY}", expires=_URL_LIFETIME_S))
        credentials = await fs.session.get_credentials()
        frozen = await credentials.get_frozen_credentials() if credentials is not None else None
        usable = frozen is not None and probe.path.endswith(_PROBE_KEY) and "X-Amz-Credential=" in probe.query
        access = _BucketAccess(probe, frozen.secret_key, frozen.token) if usable else None
    except Exception:  # noqa: BLE001 - s3fs's own requests will name what is wrong
        return None
    if access is None:
        return None
    if not access.reproduces_probe:
        if bucket not in _not_reproduced:  # once: planning asks for every thousand files
            _not_reproduced.add(bucket)
            log.warning(
                "presigned requests are off for s3://%s: its client signs in a way herd does not reproduce", bucket
            )
        return None
    return access


def _client(loop: asyncio.AbstractEventLoop) -> HttpClient:
    client = _clients.get(loop)
    if client is None:
        # botocore's trust: AWS_CA_BUNDLE when set, else the system's.
        certificates = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
        client = _clients[loop] = HttpClient(certificates=certificates, timeout_s=_TIMEOUT_S)
        atexit.register(_close, loop, client)
    return client


def _close(loop: asyncio.AbstractEventLoop, client: HttpClient) -> None:
    """At exit, as s3fs closes its own client: on the loop while it still runs (its transports are its own)."""
    if loop.is_running():
        loop.call_soon_threadsafe(client.close)
