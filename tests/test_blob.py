"""Datasets streamed from Azure Blob Storage, against a real Azurite emulator on 127.0.0.1 (issue 5/7):
upload/download CLI, pretraining straight from az://, byte-identical windows, Azurite restarts, the cache size
limit, changed blobs, bad credentials, a missing container and an endpoint that is down."""

import datetime
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_ARGS, run_in_process, run_script, write_synthetic

import dmc_pretrain
from control_pretrain.data.datamodules.downstream import DownstreamDataModule
from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.data.schema import dataset_path, open_h5
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.errors import DatasetError
from control_pretrain.storage import blob as storage

ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
TASKSET = "configs/pretrain_configs/multipretrain_source_test.json"
TINY = TINY_ARGS


def conn_string(port: int, key: str = ACCOUNT_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Azurite:
    """azurite-blob on 127.0.0.1 with its data in a folder, so a restart keeps the uploaded blobs."""

    def __init__(self, location: str) -> None:
        self.binary = os.path.join(ROOT, ".azurite", "node_modules", ".bin", "azurite-blob")
        if not os.path.exists(self.binary):
            self.binary = shutil.which("azurite-blob")
        if not self.binary:
            pytest.fail("Azurite is not installed: run `bash scripts/test.sh` (it installs Azurite with "
                        "`npm install --prefix .azurite azurite`) before these tests.")
        self.location, self.port, self.proc = location, free_port(), None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.location,
             "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                pytest.fail(f"azurite-blob exited with code {self.proc.returncode}")
            time.sleep(0.1)
        pytest.fail("azurite-blob did not accept connections within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = Azurite(str(tmp_path_factory.mktemp("azurite")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def blob_env(azurite, monkeypatch, tmp_path):
    """Connection string of the emulator and a fresh cache folder for this test (in-process and subprocesses)."""
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn_string(azurite.port),
           storage.ENV_CACHE_DIR: str(tmp_path / "cache"), storage.ENV_TIMEOUT: "60"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(storage.ENV_CACHE_GB, raising=False)
    for k in storage.stats:
        storage.stats[k] = 0
    return env


@pytest.fixture(scope="module")
def uploaded(azurite, collected_dir):
    """The collected test dataset uploaded with the CLI to az://datasets/run1."""
    res = run_script("dmc_data.py", "upload", "--src", str(collected_dir), "--dest", "az://datasets/run1", "--quiet",
                     env={"AZURE_STORAGE_CONNECTION_STRING": conn_string(azurite.port)})
    assert res.returncode == 0, res.stderr
    assert "uploaded 4 file(s)" in res.stdout, res.stdout
    return "az://datasets/run1"


def h5_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)


def test_upload_is_resumable_and_download_skips_unchanged(uploaded, collected_dir, blob_env, tmp_path):
    res = run_script("dmc_data.py", "upload", "--src", str(collected_dir), "--dest", uploaded, "--quiet", env=blob_env)
    assert res.returncode == 0 and "uploaded 0 file(s)" in res.stdout and "skipped 4" in res.stdout, res.stdout
    dest = tmp_path / "copy"
    res = run_script("dmc_data.py", "download", "--src", uploaded, "--dest", str(dest), "--quiet", env=blob_env)
    assert res.returncode == 0 and "downloaded 4 file(s)" in res.stdout, res.stdout + res.stderr
    assert h5_files(dest) == h5_files(collected_dir)
    for rel in h5_files(dest):
        assert (dest / rel).read_bytes() == (collected_dir / rel).read_bytes()
    damaged = dest / h5_files(dest)[0]
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    res = run_script("dmc_data.py", "download", "--src", uploaded, "--dest", str(dest), "--quiet", env=blob_env)
    assert "downloaded 1 file(s)" in res.stdout and "skipped 3" in res.stdout, res.stdout
    assert damaged.read_bytes() == (collected_dir / h5_files(dest)[0]).read_bytes()


def pretrain_args(prefix, out_dir, extra=()):
    return ["--multi_config", TASKSET, "--source_data_type", "rand", "--train_replay_id", "1", "--epochs", "1",
            "--num_steps", "1000", "--model_type", "naive", "--output_dir", str(out_dir), "--data_dir_prefix",
            str(prefix), "--obs_type", "state", *TINY, *extra]


def test_pretrain_straight_from_blob(uploaded, blob_env, tmp_path):
    cache = tmp_path / "cli_cache"
    cli = run_in_process(dmc_pretrain.main, pretrain_args(uploaded, tmp_path / "out",
                                                          ["--data.cache_dir", str(cache)]))
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").exists()
    assert cli.datamodule.hparams.cache_dir == str(cache)
    cached = [p for p in h5_files(cache) if p.endswith(".h5")]
    assert len(cached) == 2  # replay id 1 of both tasks: only what the run reads is downloaded


def test_windows_from_blob_equal_local_windows(uploaded, collected_dir, blob_env):
    kw = {"multi_config": TASKSET, "train_replay_id": 1, "val_replay_id": 2, "num_steps": 1000,
          "obs_type": "state", "context_length": 6, "num_workers": 0}
    remote = MultiTaskDataModule(data_dir_prefix=uploaded, **kw)
    local = MultiTaskDataModule(data_dir_prefix=str(collected_dir), **kw)
    remote.setup()
    local.setup()
    assert len(remote.train_set) == len(local.train_set)
    idx = np.arange(len(local.train_set))
    a, b = remote.train_set.__getitems__(idx), local.train_set.__getitems__(idx)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k
    down = DownstreamDataModule(domain="cartpole", task="swingup", source_data_type="rand", data_dir_prefix=uploaded,
                                num_steps=1000, obs_type="state", context_length=6)
    down_local = DownstreamDataModule(domain="cartpole", task="swingup", source_data_type="rand", num_steps=1000,
                                      data_dir_prefix=str(collected_dir), obs_type="state", context_length=6)
    assert down.train_file.observations.tobytes() == down_local.train_file.observations.tobytes()
    assert down.val_file.actions.tobytes() == down_local.val_file.actions.tobytes()
    first_hits = storage.stats["misses"]
    MultiTaskDataModule(data_dir_prefix=uploaded, **kw).setup()  # warm: nothing downloaded again
    assert storage.stats["misses"] == first_hits and storage.stats["hits"] > 0


def test_https_form_with_sas_token(uploaded, collected_dir, blob_env, azurite, monkeypatch):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas("devstoreaccount1", "datasets", account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    prefix = f"http://127.0.0.1:{azurite.port}/devstoreaccount1/datasets/run1?{sas}"
    remote = dataset_path(prefix, "randcollect", "cartpole", "swingup", 1)
    assert remote.endswith(f"cartpole_swingup_s1.h5?{sas}")
    local = dataset_path(str(collected_dir), "randcollect", "cartpole", "swingup", 1)
    assert TrajectoryFile(remote).observations.tobytes() == TrajectoryFile(local).observations.tobytes()
    assert sas not in storage.display(remote)


def pixel_layout(root, replay_ids, lengths=(40, 40)):
    paths = []
    for r in replay_ids:
        path = root / "randcollect_cartpole_swingup" / f"cartpole_swingup_s{r}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic(path, list(lengths), first_id=10 * r, pixels=True, seed=r)
        paths.append(path)
    return paths


def upload(src, dest, env):
    res = run_script("dmc_data.py", "upload", "--src", str(src), "--dest", dest, "--quiet", env=env)
    assert res.returncode == 0, res.stderr


def test_pixel_windows_byte_identical_and_restart_mid_read(blob_env, azurite, tmp_path):
    local_paths = pixel_layout(tmp_path / "px", [1, 2])
    upload(tmp_path / "px", "az://pixels/v1", blob_env)
    remote = storage.join("az://pixels/v1", "randcollect_cartpole_swingup", "cartpole_swingup_s1.h5")
    rf = TrajectoryFile(remote, load_pixels=True)
    lf = TrajectoryFile(str(local_paths[0]), load_pixels=True)
    assert rf.observations.tobytes() == lf.observations.tobytes()
    # Azurite goes down between opening the file and reading its frames, and comes back 2 s later.
    azurite.stop()
    restarter = threading.Timer(2.0, azurite.start)
    restarter.start()
    start = time.monotonic()
    try:
        a = np.empty((30, 3, 84, 84), np.uint8)
        rf.pixels.read_into(a, 5)  # the first read re-checks the blob's ETag: retried until Azurite is back
    finally:
        restarter.join()
    assert time.monotonic() - start > 1.5  # it did wait for the restart
    b = np.empty_like(a)
    lf.pixels.read_into(b, 5)
    assert a.tobytes() == b.tobytes()
    # Cold read of another file while Azurite restarts: the download is retried and completes.
    azurite.stop()
    restarter = threading.Timer(2.0, azurite.start)
    restarter.start()
    try:
        other = TrajectoryFile(remote.replace("_s1.h5", "_s2.h5"), load_pixels=True)
    finally:
        restarter.join()
    a2, b2 = np.empty_like(a), np.empty_like(a)
    other.pixels.read_into(a2, 40)
    TrajectoryFile(str(local_paths[1]), load_pixels=True).pixels.read_into(b2, 40)
    assert a2.tobytes() == b2.tobytes()


def _fetch_in_child(path: str) -> dict:
    for k in storage.stats:
        storage.stats[k] = 0
    storage.local_path(path)
    return dict(storage.stats)


def test_one_download_shared_by_threads_processes_and_workers(blob_env, tmp_path):
    local_paths = pixel_layout(tmp_path / "shared", [1, 2])
    upload(tmp_path / "shared", "az://shared/p", blob_env)
    remotes = [storage.join("az://shared/p", "randcollect_cartpole_swingup", f"cartpole_swingup_s{r}.h5")
               for r in (1, 2)]
    with ThreadPoolExecutor(4) as pool:  # four concurrent opens of one cold file: one download
        list(pool.map(storage.local_path, [remotes[0]] * 4))
    assert storage.stats["misses"] == 1 and storage.stats["hits"] == 3 and storage.stats["verify_failures"] == 0
    with multiprocessing.get_context("fork").Pool(3) as pool:  # other processes on the node: cache hits
        child_stats = pool.map(_fetch_in_child, [remotes[0]] * 3)
    assert [s["misses"] for s in child_stats] == [0, 0, 0] and [s["hits"] for s in child_stats] == [1, 1, 1]
    # DataLoader workers read windows from the cached copies: the same bytes as from the local files.
    from control_pretrain.data.windows import EpisodeWindowDataset, window_loader

    def batches(paths, workers):
        ds = EpisodeWindowDataset([TrajectoryFile(str(p), load_pixels=True) for p in paths], 6, state=False,
                                  pixels=True, pixel_cache_bytes=0)
        return [b["pixels"].numpy() for b in window_loader(ds, 16, workers, shuffle=False)]

    got, want = batches(remotes, 2), batches(local_paths, 0)
    assert len(got) == len(want) and all(a.tobytes() == b.tobytes() for a, b in zip(got, want))


def test_changed_blob_is_downloaded_again(blob_env, tmp_path):
    paths = pixel_layout(tmp_path / "v1", [1], lengths=(30,))
    upload(tmp_path / "v1", "az://changing/p", blob_env)
    remote = storage.join("az://changing/p", "randcollect_cartpole_swingup", "cartpole_swingup_s1.h5")
    with open_h5(remote) as h5:
        assert h5["observations"].shape[0] == 30
    write_synthetic(paths[0], [50], pixels=True)  # same name, new content
    upload(tmp_path / "v1", "az://changing/p", blob_env)
    with open_h5(remote) as h5:
        assert h5["observations"].shape[0] == 50
    assert storage.stats["misses"] == 2
    assert Path(storage.local_path(remote)).read_bytes() == paths[0].read_bytes()
    # A crash mid-download leaves a temporary and, at worst, a copy without its sidecar: neither is ever served.
    cached = Path(storage.cached_name(remote))
    Path(str(cached) + storage.META).unlink()
    cached.write_bytes(cached.read_bytes()[:1000])
    stale = Path(f"{cached}{storage.PART}999999-1")
    stale.write_bytes(b"half")
    assert Path(storage.local_path(remote)).read_bytes() == paths[0].read_bytes()
    assert storage.stats["misses"] == 3 and not stale.exists()  # the eviction pass removed the leftover


def test_cache_size_limit_holds(blob_env, tmp_path, monkeypatch):
    pixel_layout(tmp_path / "many", [1, 2, 3, 4, 5])
    upload(tmp_path / "many", "az://limited/p", blob_env)
    remotes = [storage.join("az://limited/p", "randcollect_cartpole_swingup", f"cartpole_swingup_s{r}.h5")
               for r in range(1, 6)]
    size = storage.properties(remotes[0]).size
    limit = int(2.5 * size)
    monkeypatch.setenv(storage.ENV_CACHE_GB, str(limit / 2**30))
    assert storage.prefetch(remotes) == remotes[:2]  # only what fits together
    assert storage.stats["misses"] == 2 and storage.cache_usage() <= limit
    for k in storage.stats:
        storage.stats[k] = 0
    for _ in range(2):
        for r in remotes:
            TrajectoryFile(r)
            assert storage.cache_usage() <= limit
    # LRU with room for two: after the two prefetched hits, every open of five files in a cycle misses
    assert storage.stats["misses"] == 8 and storage.stats["hits"] == 12  # 2 opens per TrajectoryFile
    assert storage.stats["verify_failures"] == 0
    # Files pinned by readers are never evicted; when they fill the cache the next open says what to do.
    readers = [TrajectoryFile(r, load_pixels=True) for r in remotes[:2]]
    for f in readers:
        f.pixels.read_into(np.empty((1, 3, 84, 84), np.uint8), 0)
    with pytest.raises(DatasetError, match="cache_size_gb"):
        TrajectoryFile(remotes[2])
    assert storage.cache_usage() <= limit
    for f in readers:
        storage.unpin(storage.cached_name(f.path))


def test_throttling_is_retried_then_bounded(monkeypatch):
    from azure.core.exceptions import HttpResponseError

    monkeypatch.setenv(storage.ENV_TIMEOUT, "2")
    loc = storage.parse("az://throttled/prefix")
    calls = []

    def throttled(times):
        def fn():
            calls.append(time.monotonic())
            if len(calls) <= times:
                err = HttpResponseError(message="Server Busy")
                err.status_code = 503 if len(calls) % 2 else 429
                raise err
            return "ok"
        return fn

    assert storage.call(loc, "reading", throttled(2)) == "ok" and len(calls) == 3
    assert calls[2] - calls[0] >= 0.5  # backed off
    calls.clear()
    start = time.monotonic()
    with pytest.raises(DatasetError, match="unreachable.*'throttled', prefix 'prefix'"):
        storage.call(loc, "reading", throttled(10**6))
    assert time.monotonic() - start < 4


def run_pretrain(prefix, env, tmp_path, timeout=120):
    return run_script("dmc_pretrain.py", *pretrain_args(prefix, tmp_path / "out"), env=env, timeout=timeout)


def test_bad_credentials_say_so(uploaded, blob_env, azurite, tmp_path):
    env = {**blob_env, "AZURE_STORAGE_CONNECTION_STRING": conn_string(azurite.port, key="d3Jvbmc=" * 11 + "AA==")}
    res = run_pretrain(uploaded, env, tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "authentication failed" in res.stderr and "datasets" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_container_names_container_and_prefix(azurite, blob_env, tmp_path):
    res = run_pretrain("az://no-such-container/some/prefix", blob_env, tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "container does not exist" in res.stderr
    assert "no-such-container" in res.stderr and "some/prefix" in res.stderr
    assert "Traceback" not in res.stderr


def test_endpoint_down_fails_within_bounded_time(blob_env, tmp_path):
    env = {**blob_env, "AZURE_STORAGE_CONNECTION_STRING": conn_string(free_port()), storage.ENV_TIMEOUT: "3"}
    start = time.monotonic()
    res = run_pretrain("az://datasets/run1", env, tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert "unreachable" in res.stderr and "'datasets'" in res.stderr and "'run1" in res.stderr
    assert "Traceback" not in res.stderr
