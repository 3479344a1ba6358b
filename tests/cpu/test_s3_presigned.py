"""Parquet footers and folder listings on S3 go through presigned URLs over herd's HTTP client (a fraction of
botocore's CPU), and whatever that way does not get is made by s3fs, whose answer stands: these pin down
both halves on the moto server, through the logging proxy that shows each request as it arrived, and
herd's signer against botocore's."""

from __future__ import annotations

import hashlib
import hmac
import io
from urllib.parse import parse_qsl, quote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from common.storage import FileInfo, Storage
from schemas.job import RetrySpec, StorageSpec
from tests.cpu.conftest import FAKE_AWS_SECRET
from tests.cpu.flaky_s3_proxy import FlakyS3Proxy

# Keys as data lakes name them: Hive partitions (=), spaces, +, non-ASCII; each must arrive as signed.
_KEYS = ["lake/date=2024-01-01/part 0.parquet", "lake/tag=a+b/part-1.parquet", "lake/région=ü/part-2.parquet"]


def _parquet(rows: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": [f"row {row}" for row in range(rows)]}), buffer)
    return buffer.getvalue()


def _sigv4_query_signature_matches(method: str, raw_path: str, host: str, secret: str) -> bool:
    """Checks a presigned URL's SigV4 signature against the path and query as the server received them,
    as S3 does (AWS's Signature Version 4 for query parameters), independently of botocore's signer."""
    split = urlsplit(raw_path)
    query = parse_qsl(split.query, keep_blank_values=True)
    given = dict(query)["X-Amz-Signature"]
    canonical_query = "&".join(
        f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
        for name, value in sorted(query)
        if name != "X-Amz-Signature"
    )
    params = dict(query)
    signed_headers = params["X-Amz-SignedHeaders"]
    assert signed_headers == "host", signed_headers
    canonical = "\n".join([method, split.path, canonical_query, f"host:{host}\n", signed_headers, "UNSIGNED-PAYLOAD"])
    _, date, region, service, _ = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), given)


@pytest.fixture(scope="module")
def lake(s3_endpoint: str) -> dict[str, bytes]:
    """The files of _KEYS under s3://herd-test/, of different lengths, by key."""
    filesystem = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    files = {key: _parquet(10 + 5 * index) for index, key in enumerate(_KEYS)}
    for key, data in files.items():
        filesystem.pipe(f"herd-test/{key}", data)
    return files


def test_footers_come_from_presigned_gets_whose_sigv4_signature_matches_the_key_as_it_arrived(s3_endpoint, lake):
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        files = storage.expand_inputs("s3://herd-test/lake/")
        footers = storage.parquet_footers(files)
    assert [info.url for info in files] == sorted(f"s3://herd-test/{key}" for key in _KEYS)
    for info, footer in zip(files, footers, strict=True):
        expected = pq.ParquetFile(pa.BufferReader(lake[info.url.removeprefix("s3://herd-test/")])).metadata
        assert footer.equals(expected), info.url
    reads = [path for method, path in proxy.log if method == "GET" and ".parquet" in path]
    assert len(reads) == len(_KEYS)  # one each: none was left to s3fs
    host = proxy.endpoint.removeprefix("http://")
    for path in reads:
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in path, path  # SigV4: SigV2 is refused by newer regions
        assert _sigv4_query_signature_matches("GET", path, host, FAKE_AWS_SECRET), path


def test_a_footer_the_presigned_way_cannot_read_is_read_by_s3fs_whose_error_names_what_is_wrong(s3_endpoint, lake):
    listed = {
        info.url: info
        for info in Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec()).expand_inputs("s3://herd-test/lake/")
    }
    present = listed["s3://herd-test/lake/date=2024-01-01/part 0.parquet"]
    gone = FileInfo(url="s3://herd-test/lake/date=2024-01-02/part 0.parquet", size=present.size, version="")
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        found, missing = storage.parquet_footers([present, gone])
    assert found.num_rows == 10
    assert isinstance(missing, FileNotFoundError)  # s3fs's error for NoSuchKey, as before the presigned way
    gets = [path for method, path in proxy.log if method == "GET" and "2024-01-02" in path]
    assert len(gets) == 2 and "X-Amz-Signature" in gets[0] and "X-Amz-Signature" not in gets[1], gets


def test_a_footer_is_read_as_stored_even_when_the_object_says_it_is_gzip_encoded(s3_endpoint):
    # Browsers' and CDNs' uploads often set Content-Encoding; botocore hands back the stored bytes, and so
    # must the presigned way (an HTTP client that decompresses would fail here and leave it to s3fs).
    data = _parquet(7)
    filesystem = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    filesystem.pipe("herd-test/encoded/labelled-gzip.parquet", data, ContentEncoding="gzip")
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        (footer,) = storage.parquet_footers(storage.expand_inputs("s3://herd-test/encoded/"))
    assert footer.num_rows == 7
    gets = [path for method, path in proxy.log if method == "GET" and ".parquet" in path]
    assert len(gets) == 1 and "X-Amz-Signature" in gets[0], gets


def test_footer_reads_go_through_the_proxy_the_environment_names_as_botocores_requests_do(
    s3_endpoint, lake, monkeypatch
):
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec(attempts=1))
        footers = storage.parquet_footers(storage.expand_inputs("s3://herd-test/lake/"))
    assert sorted(footer.num_rows for footer in footers) == [10, 15, 20]
    gets = [path for method, path in proxy.log if method == "GET" and ".parquet" in path]
    # Forward-proxied: the whole URL in the request line; presigned, so none was left to s3fs.
    assert len(gets) == len(_KEYS) and all(path.startswith(s3_endpoint) and "X-Amz-Signature" in path for path in gets)


_LISTED = [
    "listing/a.jsonl",
    "listing/date=2024-01-01/part 0.parquet",
    "listing/tag=a+b/part%1.parquet",
    "listing/région=ü/deep/er/part-2.parquet",
    "listing/sub/",  # a folder marker, as consoles create them
    "listing/~tilde & amp.jsonl",
]


@pytest.fixture(scope="module")
def listed_folder(s3_endpoint: str) -> None:
    filesystem = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    for index, key in enumerate(_LISTED):
        filesystem.pipe(f"herd-test/{key}", b"x" * index)
    filesystem.pipe("herd-test/listing-beside/not-this.jsonl", b"beside the folder, not in it")


def _described(files: list[FileInfo]) -> list[tuple[str, int, str]]:
    return [(info.url, info.size, info.version) for info in files]


def test_a_folder_is_listed_through_presigned_pages_into_exactly_what_s3fs_lists(
    s3_endpoint, listed_folder, monkeypatch
):
    from common import s3_presigned

    expected = {
        f"s3://{name}": (info["size"], info["ETag"])
        for name, info in s3fs.S3FileSystem(endpoint_url=s3_endpoint).find("herd-test/listing", detail=True).items()
    }
    assert len(expected) == len(_LISTED)
    monkeypatch.setattr(s3_presigned, "_KEYS_A_PAGE", 2)  # 1,000 in earnest: pages follow continuation tokens
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        files = storage.expand_inputs("s3://herd-test/listing/")
    assert {url: (size, version) for url, size, version in _described(files)} == expected
    # The listing's pages (s3fs's `info` asked first whether the path is a folder, with a page of its own).
    pages = [path for method, path in proxy.log if "list-type=2" in path and "X-Amz-Signature" in path]
    assert len(pages) == 3 and all("max-keys=2" in page for page in pages), proxy.log
    assert not [path for method, path in proxy.log if "list-type=2" in path and "delimiter=&" in path], proxy.log
    host = proxy.endpoint.removeprefix("http://")
    for page in pages:
        assert _sigv4_query_signature_matches("GET", page, host, FAKE_AWS_SECRET), page


def test_a_listing_whose_presigned_pages_are_throttled_is_listed_by_s3fs_and_retried_to_the_same_files(
    s3_endpoint, listed_folder
):
    expected = _described(
        Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec()).expand_inputs("s3://herd-test/listing/")
    )
    retry = RetrySpec(attempts=30, backoff_base_s=0.01, backoff_cap_s=0.05)
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.5, seed=3) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), retry)
        assert _described(storage.expand_inputs("s3://herd-test/listing/")) == expected
    unsigned = [
        path
        for method, path in proxy.log
        if method == "GET" and "list-type=2" in path and "X-Amz-Signature" not in path
    ]
    assert proxy.failed > 0 and unsigned, proxy.log  # s3fs listed where the presigned page was refused


def test_temporary_credentials_session_token_is_signed_into_every_presigned_url(s3_endpoint, lake, monkeypatch):
    # Roles, SSO and STS give temporary keys with a token: botocore presigns with it, and so must herd.
    monkeypatch.setenv("AWS_SESSION_TOKEN", "herd-test-session-token/with+odd=characters")
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:  # a new endpoint: a new client, with the token
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        footers = storage.parquet_footers(storage.expand_inputs("s3://herd-test/lake/"))
    assert sorted(footer.num_rows for footer in footers) == [10, 15, 20]
    signed = [path for method, path in proxy.log if "X-Amz-Signature" in path]
    assert len(signed) == 1 + len(_KEYS), proxy.log  # the listing's page and each footer: none left to s3fs
    host = proxy.endpoint.removeprefix("http://")
    for path in signed:
        assert "X-Amz-Security-Token=herd-test-session-token%2Fwith%2Bodd%3Dcharacters" in path, path
        assert _sigv4_query_signature_matches("GET", path, host, FAKE_AWS_SECRET), path


def _botocore_presigned(client: object, key: str) -> str:
    return client.generate_presigned_url("get_object", Params={"Bucket": "lake-bucket", "Key": key})  # type: ignore[attr-defined]


def test_herds_signer_gives_the_url_botocore_presigns_for_keys_with_characters_that_need_quoting(monkeypatch):
    import datetime

    import botocore.auth
    import botocore.config
    import botocore.session
    from botocore.utils import percent_encode

    from common.s3_presigned import _PROBE_KEY, _BucketAccess

    now = datetime.datetime(2026, 12, 3, 1, 2, 3)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    for endpoint, region in [
        ("http://127.0.0.1:9000", "us-east-1"),
        ("https://s3.eu-central-1.amazonaws.com", "eu-central-1"),
    ]:
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="AKIAHERDSIGNERTEST01",
            aws_secret_access_key="signer/secret+key=0123456789abcdefghij",
            aws_session_token="token/with+odd=characters",
            config=botocore.config.Config(signature_version="s3v4"),
        )

        access = _BucketAccess(
            urlsplit(_botocore_presigned(client, _PROBE_KEY)),
            "signer/secret+key=0123456789abcdefghij",
            "token/with+odd=characters",
        )
        assert access.reproduces_probe
        for key in [*_KEYS, "tilde~and space/a%b&c.parquet"]:
            ours = access._url(access.key_prefix + percent_encode(key, safe="/~"), {}, now.strftime("%Y%m%dT%H%M%SZ"))
            theirs = _botocore_presigned(client, key)
            assert urlsplit(ours).path == urlsplit(theirs).path, key
            assert dict(parse_qsl(urlsplit(ours).query)) == dict(parse_qsl(urlsplit(theirs).query)), key
