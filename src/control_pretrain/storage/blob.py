"""Dataset paths that may live in Azure Blob Storage, served from a bounded local cache (docs/blob.md).

A data prefix is local (``data``) or remote: ``az://<container>/<prefix>`` (account from
``AZURE_STORAGE_CONNECTION_STRING`` or ``AZURE_STORAGE_ACCOUNT_URL``) or
``https://<account>.blob.core.windows.net/<container>/<prefix>[?<SAS>]`` (path-style emulator URLs such as
``http://127.0.0.1:10000/devstoreaccount1/<container>/<prefix>`` work too).

Credentials, first match wins: a SAS token in the URL or in ``AZURE_STORAGE_SAS_TOKEN``; the connection string in
``AZURE_STORAGE_CONNECTION_STRING``; ``DefaultAzureCredential`` (azure-identity) for ``AZURE_STORAGE_ACCOUNT_URL``.

Cache policy. A remote dataset file (one shard) is downloaded whole into ``cache_dir`` the first time it is opened,
so warm reads are local-disk reads. The download goes to a preallocated temporary name, is verified against the
blob's Content-MD5 (or its size when it has none) and is renamed into place; the blob's ETag is written to a sidecar
afterwards, so a copy without a matching sidecar is never served. Every open asks the server for the ETag (one
HEAD request): a blob that changed is downloaded again. One lock file per shard (``fcntl.flock``) makes DataLoader
workers and processes on one node download it once. Shards are evicted least-recently-opened first to keep the
cache folder under ``cache_size_gb``; a shard is never evicted while a reader pins it (``local_path(pin=True)``:
pixel readers pin the files they keep open). When the pinned shards alone do not leave room, the open fails with a
message asking for a larger ``cache_size_gb``.

Faults. Transient errors (connection refused or reset, timeouts, 408/429/5xx) are retried with exponential
backoff until ``CONTROL_PRETRAIN_BLOB_TIMEOUT_S`` seconds (default 120) have passed; then a ``DatasetError`` names
the endpoint, container and prefix. Rejected credentials and missing containers fail at once with a plain message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from ..errors import CredentialsError, DatasetError

log = logging.getLogger(__name__)
logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request at INFO
logging.getLogger("azure.identity").setLevel(logging.ERROR)  # one line per credential tried; our error says it
T = TypeVar("T")

ENV_CACHE_DIR = "CONTROL_PRETRAIN_BLOB_CACHE_DIR"
ENV_CACHE_GB = "CONTROL_PRETRAIN_BLOB_CACHE_GB"
ENV_TIMEOUT = "CONTROL_PRETRAIN_BLOB_TIMEOUT_S"
DEFAULT_CACHE_DIR = "~/.cache/control_pretrain/blob"
DEFAULT_CACHE_GB = 50.0
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
META, PIN, DLLOCK, PART = ".meta.json", ".pin", ".dl.lock", ".part-"

# Counters for benchmarks and tests (per process).
stats = {"hits": 0, "misses": 0, "bytes_downloaded": 0, "retries": 0, "verify_failures": 0}


# ---------------------------------------------------------------------------------------------------- paths


def is_remote(path: str) -> bool:
    return str(path).startswith(("az://", "https://", "http://"))


def join(prefix: str, *parts: str) -> str:
    """``os.path.join`` for local prefixes; '/'-joins remote ones, keeping a SAS query string at the end."""
    prefix = str(prefix)
    if not is_remote(prefix):
        return os.path.join(prefix, *parts)
    base, sep, query = prefix.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query)


def display(path: str) -> str:
    """The path without a SAS token (for messages and logs)."""
    return str(path).split("?", 1)[0]


@dataclass(frozen=True)
class BlobLocation:
    account_url: str | None  # None: from the connection string / AZURE_STORAGE_ACCOUNT_URL
    container: str
    blob: str  # blob name or prefix inside the container ('' for the container root)
    sas: str | None

    @property
    def where(self) -> str:
        account = self.account_url or _conn_account_url(os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")) \
            or os.environ.get("AZURE_STORAGE_ACCOUNT_URL") or "(no account configured)"
        return f"container '{self.container}', prefix '{self.blob}' at {account}"


def parse(path: str) -> BlobLocation:
    loc = _parse(str(path))
    if not _CONTAINER_RE.fullmatch(loc.container) or "--" in loc.container:
        raise DatasetError(f"{display(path)}: '{loc.container}' is not a valid Azure container name (3-63 lowercase "
                           "letters, digits and single hyphens, starting with a letter or digit).")
    return loc


_CONTAINER_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _parse(path: str) -> BlobLocation:
    if path.startswith("az://"):
        rest = path[5:].split("?", 1)
        container, _, blob = rest[0].partition("/")
        sas = rest[1] if len(rest) > 1 else None
        if not container:
            raise DatasetError(f"{display(path)}: expected az://<container>/<prefix>.")
        return BlobLocation(None, container, blob.strip("/"), sas)
    u = urlsplit(path)
    parts = [p for p in u.path.split("/") if p]
    if ".blob." in u.hostname or not parts:  # https://<account>.blob.core.windows.net/<container>/<prefix>
        account_url, rest = f"{u.scheme}://{u.netloc}", parts
    else:  # path-style (emulator): http://host:port/<account>/<container>/<prefix>
        account_url, rest = f"{u.scheme}://{u.netloc}/{parts[0]}", parts[1:]
    if not rest:
        raise DatasetError(f"{display(path)}: expected {account_url}/<container>/<prefix>.")
    return BlobLocation(account_url, rest[0], "/".join(rest[1:]), u.query or None)


# ---------------------------------------------------------------------------------------------------- clients

_lock = threading.Lock()
_clients: dict = {}


def _timeout_s() -> float:
    return float(os.environ.get(ENV_TIMEOUT, "120"))


def _client_kwargs() -> dict:
    from azure.storage.blob import ExponentialRetry

    # Short in-SDK retries; the deadline-bounded loop in ``_call`` does the long waiting.
    return {"retry_policy": ExponentialRetry(initial_backoff=0.5, increment_base=2, retry_total=1,
                                                 random_jitter_range=0.5),
            "connection_timeout": 10, "read_timeout": 60}


def service_client(loc: BlobLocation):
    """A ``BlobServiceClient`` for the location (one per process and account)."""
    from azure.storage.blob import BlobServiceClient

    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    sas = loc.sas or os.environ.get("AZURE_STORAGE_SAS_TOKEN")
    url = loc.account_url or os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
    key = (os.getpid(), loc.account_url, loc.sas, conn, sas, url)
    with _lock:
        if key in _clients:
            return _clients[key]
        if sas and url:
            try:
                client = BlobServiceClient(url, credential=sas.lstrip("?"), **_client_kwargs())
            except ValueError as err:
                raise CredentialsError(f"{url}: {err}") from None
        elif conn and (loc.account_url is None or _conn_account_url(conn) == loc.account_url.rstrip("/")):
            try:
                client = BlobServiceClient.from_connection_string(conn, **_client_kwargs())
            except ValueError as err:
                raise CredentialsError(f"AZURE_STORAGE_CONNECTION_STRING cannot be parsed ({err}).") from None
        elif url:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise CredentialsError("no Azure credentials: install azure-identity, or set "
                                   "AZURE_STORAGE_CONNECTION_STRING or a SAS token.") from None
            try:
                client = BlobServiceClient(url, credential=DefaultAzureCredential(), **_client_kwargs())
            except ValueError as err:  # e.g. a token credential over plain http
                raise CredentialsError(f"AZURE_STORAGE_ACCOUNT_URL {url}: {err} Use an https:// URL, a SAS token "
                                   "or AZURE_STORAGE_CONNECTION_STRING.") from None
        else:
            raise CredentialsError(
                f"no Azure account for {loc.where}: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
                "(with AZURE_STORAGE_SAS_TOKEN or a DefaultAzureCredential login such as `az login`), or use an "
                "https://<account>.blob.core.windows.net/<container>/<prefix> prefix."
            )
        _clients[key] = client
        return client


def _conn_account_url(conn: str) -> str | None:
    fields = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    if "BlobEndpoint" in fields:
        return fields["BlobEndpoint"].rstrip("/")
    if "AccountName" in fields:
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        return f"{fields.get('DefaultEndpointsProtocol', 'https')}://{fields['AccountName']}.blob.{suffix}"
    return None


def container_client(loc: BlobLocation):
    return service_client(loc).get_container_client(loc.container)


def blob_client(loc: BlobLocation):
    return container_client(loc).get_blob_client(loc.blob)


def call(loc: BlobLocation, what: str, fn: Callable[[], T]) -> T:
    """Run one SDK call; retry transient failures with backoff until the deadline; turn the rest into
    ``DatasetError`` paragraphs that name the container and prefix."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    deadline = time.monotonic() + _timeout_s()
    delay = 0.5
    while True:
        try:
            return fn()
        except ClientAuthenticationError as err:
            raise CredentialsError(_auth_message(loc, err)) from None
        except ResourceNotFoundError as err:
            code = getattr(err, "error_code", None)
            if code == "ContainerNotFound":
                raise DatasetError(f"Azure Blob: {what}: the container does not exist ({loc.where}). "
                                   "Check the container name of --data_dir_prefix, or upload the data with "
                                   "`python src/dmc_data.py upload`.") from None
            raise
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as err:
            status = getattr(err, "status_code", None)
            if isinstance(err, HttpResponseError) and status == 403:
                raise CredentialsError(_auth_message(loc, err)) from None
            transient = not isinstance(err, HttpResponseError) or status in TRANSIENT_STATUS or status is None
            if not transient:
                raise DatasetError(f"Azure Blob: {what} failed ({loc.where}): {_short(err)}") from None
            now = time.monotonic()
            if now >= deadline:
                raise DatasetError(
                    f"Azure Blob endpoint unreachable: {what} kept failing for {_timeout_s():.0f} s ({loc.where}): "
                    f"{_short(err)}. Check that the storage endpoint is up and reachable "
                    f"(the wait is set by {ENV_TIMEOUT})."
                ) from None
            stats["retries"] += 1
            log.warning("Azure Blob: %s failed (%s); retrying in %.1f s", what, _short(err), delay)
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 8.0) * random.uniform(0.8, 1.2)


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__


def _auth_message(loc: BlobLocation, err: Exception) -> str:
    if type(err).__name__ == "CredentialUnavailableError" or "failed to retrieve a token" in str(err):
        return (f"Azure Blob: no credential found for {loc.where}: DefaultAzureCredential tried its sources "
                f"({_short(err)}). Set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_SAS_TOKEN, or log in "
                "(`az login`, a managed identity, or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET).")
    return (f"Azure Blob authentication failed for {loc.where}: the storage account rejected the credentials "
            f"({_short(err)}). Check AZURE_STORAGE_CONNECTION_STRING, the SAS token (and its expiry and permissions), "
            "or your DefaultAzureCredential login (`az login`).")


# ---------------------------------------------------------------------------------------------------- queries

_containers_ok: set = set()


def check_container(path: str) -> None:
    """Raise a ``DatasetError`` naming the container and prefix when the container does not exist."""
    loc = parse(path)
    key = (os.getpid(), loc.account_url, loc.container)
    if key in _containers_ok:
        return
    if not call(loc, "checking the container", lambda: container_client(loc).exists()):
        raise DatasetError(f"Azure Blob: the container does not exist ({loc.where}). Check the container name of "
                           "--data_dir_prefix, or upload the data with `python src/dmc_data.py upload`.")
    _containers_ok.add(key)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    check_container(path)
    loc = parse(path)
    return call(loc, f"looking up {loc.blob}", lambda: blob_client(loc).exists())


def properties(path: str):
    loc = parse(path)
    return call(loc, f"reading the properties of {loc.blob}", lambda: blob_client(loc).get_blob_properties())


# ---------------------------------------------------------------------------------------------------- cache


def configure(cache_dir: str | None = None, cache_size_gb: float | None = None) -> None:
    """Set the cache folder and size for this process and the processes it starts (through the environment,
    so spawned DataLoader workers and DDP ranks see the same settings)."""
    if cache_dir is not None:
        os.environ[ENV_CACHE_DIR] = str(cache_dir)
    if cache_size_gb is not None:
        os.environ[ENV_CACHE_GB] = str(cache_size_gb)


def cache_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV_CACHE_DIR, DEFAULT_CACHE_DIR)))


def cache_limit_bytes() -> int:
    return int(float(os.environ.get(ENV_CACHE_GB, DEFAULT_CACHE_GB)) * 2**30)


def cached_name(path: str) -> str:
    loc = parse(path)
    account = loc.account_url or _conn_account_url(os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")) or \
        os.environ.get("AZURE_STORAGE_ACCOUNT_URL", "default")
    account = account.split("://", 1)[-1].replace("/", "_").replace(":", "_")
    return os.path.join(cache_dir(), account, loc.container, *loc.blob.split("/"))


@contextlib.contextmanager
def _flock(path: str, mode: int):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _try_exclusive(path: str) -> int | None:
    """An fd holding an exclusive lock on ``path`` or None if someone else holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


_pins: dict[tuple[int, str], list] = {}  # (pid, local path) -> [fd, refcount]


def _pin(local: str) -> None:
    with _lock:
        entry = _pins.get((os.getpid(), local))
        if entry:
            entry[1] += 1
            return
        fd = os.open(local + PIN, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _pins[(os.getpid(), local)] = [fd, 1]


def unpin(local: str) -> None:
    with _lock:
        entry = _pins.get((os.getpid(), local))
        if not entry:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            os.close(entry[0])
            del _pins[(os.getpid(), local)]


def _read_meta(local: str) -> dict | None:
    try:
        with open(local + META) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cache_usage() -> int:
    """Bytes of shard files (complete and in progress) in the cache folder."""
    total = 0
    for root, _, names in os.walk(cache_dir()):
        for n in names:
            if n.endswith((META, PIN, DLLOCK)) or n == ".cache.lock":
                continue
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, n)).st_size
    return total


def _evict_for(needed: int, keep: str) -> None:
    """Called under the cache lock: delete least-recently-opened unpinned shards (and stale temporaries) until
    ``needed`` more bytes fit under the limit."""
    limit = cache_limit_bytes()
    if needed > limit:
        raise DatasetError(f"a dataset file of {needed / 2**30:.2f} GB does not fit in the blob cache "
                           f"({limit / 2**30:.2f} GB): raise --data.cache_size_gb.")
    shards, used = [], 0
    for root, _, names in os.walk(cache_dir()):
        for n in names:
            p = os.path.join(root, n)
            if PART in n:
                owner = p.split(PART)[0]
                # Nobody downloading it (we hold the lock of ``keep`` ourselves): a crashed download's leftover.
                fd = None if owner == keep else _try_exclusive(owner + DLLOCK)
                if owner == keep or fd is not None:
                    with contextlib.suppress(OSError):
                        os.remove(p)
                    if fd is not None:
                        os.close(fd)
                    continue
            if n.endswith((META, PIN, DLLOCK)) or n == ".cache.lock":
                continue
            try:
                size = os.stat(p).st_size
            except OSError:
                continue
            used += size
            if PART not in n and p != keep:
                try:
                    last = os.stat(p + META).st_mtime
                except OSError:
                    last = 0.0
                shards.append((last, p, size))
    for _, p, size in sorted(shards):
        if used + needed <= limit:
            return
        fd = _try_exclusive(p + PIN)
        if fd is None:
            continue  # pinned by a reader
        try:
            for suffix in (META, ""):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p + suffix)
            used -= size
            log.info("blob cache: evicted %s (%.1f MB)", p, size / 1e6)
        finally:
            os.close(fd)
    if used + needed > limit:
        raise DatasetError(
            f"the blob cache {cache_dir()} is full: {used / 2**30:.2f} GB are pinned by running readers and "
            f"{needed / 2**30:.2f} GB more are needed, over --data.cache_size_gb {limit / 2**30:.2f}. "
            "Raise --data.cache_size_gb (pixel training keeps every file it reads in the cache)."
        )


def md5_file(path: str, chunk: int = 8 << 20) -> bytes:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.digest()


def local_path(path: str, pin: bool = False) -> str:
    """The local file to open for ``path``: itself when local, else a verified, up-to-date cached copy.
    With ``pin``, the copy is not evicted until ``unpin`` (or the process ends)."""
    if not is_remote(path):
        return path
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    loc = parse(path)
    local = cached_name(path)
    for _attempt in range(5):
        try:
            props = call(loc, f"reading the properties of {loc.blob}",
                          lambda: blob_client(loc).get_blob_properties())
        except ResourceNotFoundError:
            check_container(path)
            raise DatasetError(f"{display(path)}: no such blob ({loc.where}). Upload it with "
                               "`python src/dmc_data.py upload` or check --data_dir_prefix.") from None
        etag, size = props.etag, props.size
        md5 = props.content_settings.content_md5
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with _flock(local + DLLOCK, fcntl.LOCK_EX):
            meta = _read_meta(local)
            if meta and meta.get("etag") == etag and meta.get("size") == size and os.path.exists(local):
                os.utime(local + META)  # last access, for LRU eviction
                if pin:
                    _pin(local)
                if os.path.exists(local):  # not evicted between the check and the pin
                    stats["hits"] += 1
                    return local
                if pin:
                    unpin(local)
                continue
            if meta:
                log.info("blob cache: %s changed on the server (ETag %s -> %s); downloading it again",
                         display(path), meta.get("etag"), etag)
            with contextlib.suppress(FileNotFoundError):
                os.remove(local + META)  # from here on the copy under the final name is not served
            tmp = f"{local}{PART}{os.getpid()}-{threading.get_ident()}"
            with _flock(os.path.join(cache_dir(), ".cache.lock"), fcntl.LOCK_EX):
                _evict_for(size, keep=local)
                with open(tmp, "wb") as f:  # reserve the space now, so concurrent downloads count it
                    f.truncate(size)
            try:
                with open(tmp, "r+b") as f:
                    written = call(loc, f"downloading {loc.blob}",
                                    lambda f=f, etag=etag: _download_into(loc, f, etag, MatchConditions))
                got = md5_file(tmp)
                if written != size or os.path.getsize(tmp) != size or (md5 and bytes(md5) != got):
                    stats["verify_failures"] += 1
                    log.warning("blob cache: %s failed verification (size/MD5); downloading it again", display(path))
                    continue
                os.replace(tmp, local)
                stats["misses"] += 1
                stats["bytes_downloaded"] += size
                with open(local + META + ".tmp", "w") as f:
                    json.dump({"etag": etag, "size": size, "md5": got.hex(), "url": display(path)}, f)
                os.replace(local + META + ".tmp", local + META)
            except ResourceModifiedError:
                log.info("blob cache: %s changed during the download; downloading it again", display(path))
                continue
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            if pin:
                _pin(local)
            return local
    raise DatasetError(f"{display(path)}: the blob kept changing (or failed verification) while it was downloaded "
                       f"({loc.where}).")


def _download_into(loc: BlobLocation, f, etag: str, conditions) -> int:
    """Parallel ranged download into the preallocated file ``f`` (the SDK seeks to each range's offset, so the
    file position afterwards says nothing about its length: never truncate at it). Returns the bytes written."""
    f.seek(0)
    downloader = blob_client(loc).download_blob(etag=etag, match_condition=conditions.IfNotModified,
                                                max_concurrency=4)
    return downloader.readinto(f)


def prefetch(paths: Iterable[str], workers: int = 8) -> list[str]:
    """Bring remote files into the cache in parallel (cold start bounded by bandwidth, not latency). Only the
    leading files that fit in the cache together are fetched (the rest come when opened), so a cache smaller
    than the dataset is not churned. Returns the paths fetched."""
    paths = list(paths)
    if not paths:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        sizes = list(pool.map(lambda p: properties(p).size, paths))
        chosen, total = [], 0
        for p, size in zip(paths, sizes):
            if total + size > cache_limit_bytes():
                break
            chosen.append(p)
            total += size
        list(pool.map(local_path, chosen))
    return chosen

