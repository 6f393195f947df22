"""``dmc_data.py upload`` / ``download``: copy a dataset folder to or from Azure Blob Storage (docs/blob.md).

Parallel (a thread pool, one file per task, each file itself transferred in up to 4 ranges), resumable (a rerun
skips every file whose MD5 already matches, so an interrupted copy continues where it stopped) and with a progress
bar. Uploads store the MD5 as the blob's Content-MD5, which the training cache verifies its downloads against.
Downloads go to a temporary name and are renamed when verified, so no half-written file is left under a final name.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from ..errors import DatasetError
from . import blob as storage


@dataclass
class Transfer:
    name: str  # path relative to the folder / blob name relative to the prefix
    size: int
    done: bool = False  # skipped: already identical


def _progress(quiet: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=quiet)


def _local_files(src: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for n in sorted(names):
            if ".tmp-" in n or n.startswith("."):
                continue  # writers' temporaries (DESIGN.md: files appear under their final name when complete)
            out.append(os.path.relpath(os.path.join(root, n), src).replace(os.sep, "/"))
    return out


def _run(jobs, workers: int, quiet: bool, label: str, total: int, fn) -> None:
    with _progress(quiet) as progress, ThreadPoolExecutor(max(1, workers)) as pool:
        bar = progress.add_task(label, total=total)
        futures = [pool.submit(fn, job, lambda n: progress.advance(bar, n)) for job in jobs]
        for fut in as_completed(futures):
            fut.result()


def upload(src: str, dest: str, workers: int = 8, quiet: bool = False) -> dict:
    """Upload every file under ``src`` to ``dest`` (a remote prefix) keeping relative paths; returns counts."""
    from azure.storage.blob import ContentSettings

    if not os.path.isdir(src):
        raise DatasetError(f"{src}: no such folder to upload.")
    if not storage.is_remote(dest):
        raise DatasetError(f"--dest {dest}: expected az://<container>/<prefix> or an https:// blob URL.")
    base = storage.parse(dest)
    container = storage.container_client(base)
    if not storage.call(base, "checking the container", container.exists):
        storage.call(base, "creating the container", container.create_container)
    names = _local_files(src)
    counts = {"uploaded": 0, "skipped": 0, "bytes": 0}

    def one(name: str, advance) -> None:
        local = os.path.join(src, name)
        remote = storage.join(dest, name)
        loc = storage.parse(remote)
        md5 = storage.md5_file(local)
        size = os.path.getsize(local)
        if _remote_md5(remote) == md5:
            counts["skipped"] += 1
            advance(size)
            return

        def put():
            with open(local, "rb") as f:
                storage.blob_client(loc).upload_blob(f, overwrite=True, max_concurrency=4,
                                                     content_settings=ContentSettings(content_md5=bytearray(md5)))

        storage.call(loc, f"uploading {name}", put)
        counts["uploaded"] += 1
        counts["bytes"] += size
        advance(size)

    total = sum(os.path.getsize(os.path.join(src, n)) for n in names)
    _run(names, workers, quiet, f"upload -> {storage.display(dest)}", total, one)
    return counts


def _remote_md5(remote: str) -> bytes | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        md5 = storage.properties(remote).content_settings.content_md5
    except ResourceNotFoundError:
        return None
    return bytes(md5) if md5 else None


def download(src: str, dest: str, workers: int = 8, quiet: bool = False) -> dict:
    """Download every blob under ``src`` (a remote prefix) into the folder ``dest``; returns counts."""
    if not storage.is_remote(src):
        raise DatasetError(f"--src {src}: expected az://<container>/<prefix> or an https:// blob URL.")
    base = storage.parse(src)
    storage.check_container(src)
    prefix = base.blob.rstrip("/") + "/" if base.blob else ""
    blobs = storage.call(base, "listing the blobs",
                          lambda: list(storage.container_client(base).list_blobs(name_starts_with=prefix)))
    if not blobs:
        raise DatasetError(f"Azure Blob: no blobs under {base.where}.")
    counts = {"downloaded": 0, "skipped": 0, "bytes": 0}

    def one(blob, advance) -> None:
        name = blob.name[len(prefix):]
        local = os.path.join(dest, *name.split("/"))
        md5 = blob.content_settings.content_md5
        if md5 and os.path.exists(local) and os.path.getsize(local) == blob.size \
                and storage.md5_file(local) == bytes(md5):
            counts["skipped"] += 1
            advance(blob.size)
            return
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        tmp = f"{local}.tmp-{os.getpid()}"
        loc = storage.parse(storage.join(src, name))
        try:
            def get():
                with open(tmp, "wb") as f:
                    storage.blob_client(loc).download_blob(max_concurrency=4).readinto(f)

            storage.call(loc, f"downloading {name}", get)
            if md5 and storage.md5_file(tmp) != bytes(md5):
                raise DatasetError(f"{storage.display(storage.join(src, name))}: downloaded bytes do not match the "
                                   f"blob's Content-MD5 ({base64.b64encode(bytes(md5)).decode()}); try again.")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        counts["downloaded"] += 1
        counts["bytes"] += blob.size
        advance(blob.size)

    _run(blobs, workers, quiet, f"download <- {storage.display(src)}", sum(b.size for b in blobs), one)
    return counts
