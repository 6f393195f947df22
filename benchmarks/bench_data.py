"""Data-pipeline benchmarks (issue 1/7), run by hand:

    python benchmarks/bench_data.py [--quick] [--out docs/benchmarks.md]

Measures, each repeated >= 3 times (median reported):

1. Collection speed, agent steps/s with action repeat 4, per domain: ``record_episode`` with a random policy on a
   ``make_env`` env, state only / pixels at default visuals / pixels with ``fast_render=True``; plus raw
   ``env.render()`` frames/s default vs fast (platform.md §3: ~30 fps vs ~500 fps).
2. State window sampling (K=30) from a synthetic 1M-step file (obs 24, action 6): ``EpisodeWindowDataset.
   __getitems__`` on random batches of 256 vs a naive per-window Python slicing loop. Target: >= 100,000 windows/s.
   Also the one-time construction cost (TrajectoryFile + dataset).
3. Pixel windows (K=30, 84x84, batches of 32) from a ~20k-step file: from disk (page cache warm,
   ``pixel_cache_bytes=0``) with one read per chunk at its raw byte offset and through the h5py fallback, and from the RAM
   cache, vs a naive per-window h5py slice read with the default chunk cache. Target: >= 1,000 pixel windows/s.
4. Peak memory: in a subprocess (peak RSS of its own), a pixel file twice the cache budget (2 GB / 1 GiB; quick:
   430 MB / 200 MiB), 300 random batches of 32 windows. Target: peak RSS < budget + 1 GiB. Also the pixel file
   of (3) with a budget that holds it, to show what the RAM cache costs.

Scratch files go to benchmarks/_work/bench_data/ (git-ignored), removed at the end. ``--out`` replaces (or appends)
the section "## Data (issue 1/7)" of the markdown file, creating the file with a header if needed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
from _report import cpu_model, markdown_table, write_section  # benchmarks/_report.py

WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work", "bench_data")  # removed at the end
DOMAINS = [("walker", "walk"), ("cheetah", "run"), ("hopper", "hop"), ("cartpole", "swingup"),
           ("finger", "spin"), ("pendulum", "swingup"), ("quadruped", "walk")]
K, REPS = 30, 3
SECTION = "## Data (issue 1/7)"


def timed(fn, reps=REPS):
    """Median wall time of ``fn()`` over ``reps`` calls."""
    return compare({"": fn}, reps)[""]


def compare(fns, reps=REPS):
    """Median wall time of each callable in ``fns``, called round-robin (one call of each per round) so that
    load from other processes hits all alternatives alike and their ratios stay meaningful."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def each(fn, items):
    """A callable applying ``fn`` to every item and dropping each result at once, as a training loop does
    (keeping all batches alive would make every batch fault in fresh memory)."""
    def run():
        for x in items:
            fn(x)
    return run


def fmt(x, digits=0):
    return f"{x:,.{digits}f}"


# --------------------------------------------------------------------------------------------- 1. collection
def collection_rates(domain, task, steps, frames):
    """Agent steps/s of ``record_episode`` and ``env.render()`` frames/s for the state / default / fast envs."""
    from control_pretrain.collect.job import record_episode
    from control_pretrain.envs.dmc import make_env

    envs = {"state": make_env(domain, task), "default": make_env(domain, task, pixels=True),
            "fast": make_env(domain, task, pixels=True, fast_render=True)}
    rng = np.random.default_rng(0)
    lengths = {mode: [] for mode in envs}

    def episode(mode):
        env = envs[mode]
        ep = record_episode(env, lambda _obs: rng.uniform(-1, 1, env.action_dim), mode != "state")
        lengths[mode].append(len(ep["actions"]))

    for mode, env in envs.items():
        if steps[mode] < 250:  # shorten the episode (private dm_control field; benchmark only)
            env._env._step_limit = steps[mode] * env.action_repeat
        env.reset()
        if mode != "state":
            env.render()  # GL context / camera creation is not part of the steady state
    t_ep = compare({mode: (lambda mode=mode: episode(mode)) for mode in envs})
    assert all(lengths[m] == [steps[m]] * REPS for m in envs), lengths
    t_render = compare({mode: each(lambda _, env=envs[mode]: env.render(), range(frames[mode])) for mode in frames})
    for env in envs.values():
        env.close()
    return {m: steps[m] / t for m, t in t_ep.items()}, {m: frames[m] / t for m, t in t_render.items()}


def bench_collection(quick):
    steps = {"state": 250, "default": 50 if quick else 250, "fast": 250}
    frames = {"default": 10 if quick else 30, "fast": 50 if quick else 200}
    rows = []
    for domain, task in DOMAINS:
        rate, fps = collection_rates(domain, task, steps, frames)
        rows.append([f"{domain}-{task}", fmt(rate["state"]), fmt(rate["default"]), fmt(rate["fast"]),
                     fmt(rate["fast"] / rate["default"], 1) + "x", fmt(fps["default"]), fmt(fps["fast"]),
                     fmt(fps["fast"] / fps["default"], 1) + "x"])
        print(rows[-1], flush=True)
    header = ["task", "state steps/s", "pixels default steps/s", "pixels fast steps/s", "fast/default",
              "render default fps", "render fast fps", "fast/default"]
    note = (f"Agent steps/s of `record_episode` (random policy, action repeat 4, 1 episode of 250 steps; default-"
            f"visual pixels: {steps['default']} steps), median of {REPS} episodes, env construction and first render "
            f"excluded; the three variants of a task run round-robin. Render fps: `env.render()` alone (84x84, "
            f"channels-first; {frames['default']} / {frames['fast']} frames), median of {REPS} runs.")
    return markdown_table(header, rows) + "\n\n" + note


# ------------------------------------------------------------------------------------------ synthetic files
def write_file(path, num_steps, obs_dim=24, act_dim=6, pixels=False, episode_len=250, seed=0):
    """Synthetic episodes of ``episode_len`` steps; frames cycle through a few random blocks (fast to make)."""
    from control_pretrain.data.writer import TrajectoryWriter

    rng = np.random.default_rng(seed)
    attrs = {"domain": "walker", "task": "walk", "policy": "random", "seed": seed, "replay_id": 0,
             "action_repeat": 4, "obs_keys": ["synthetic"]}
    blocks = [rng.integers(0, 256, (episode_len, 3, 84, 84), dtype=np.uint8) for _ in range(4)] if pixels else []
    done = np.zeros(episode_len, bool)
    done[-1] = True
    with TrajectoryWriter(path, attrs, obs_dim, act_dim, 18, (3, 84, 84) if pixels else None) as w:
        for e in range(num_steps // episode_len):
            ep = {"observations": rng.standard_normal((episode_len, obs_dim), np.float32),
                  "actions": rng.uniform(-1, 1, (episode_len, act_dim)).astype(np.float32),
                  "rewards": rng.random(episode_len, np.float32), "terminals": np.zeros(episode_len, bool),
                  "timeouts": done, "physics": np.zeros((episode_len, 18), np.float32)}
            if pixels:
                ep["pixels"] = blocks[e % len(blocks)]
            w.append_episode(ep)
    return path


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


# ----------------------------------------------------------------------------------------- 2. state windows
def bench_state_windows(quick):
    import h5py

    from control_pretrain.data.trajectory_file import TrajectoryFile
    from control_pretrain.data.windows import EpisodeWindowDataset

    n_steps = 1_000_000
    t = time.perf_counter()
    path = write_file(os.path.join(WORK, "state_1m.h5"), n_steps)
    write_s = time.perf_counter() - t
    size_mb = os.path.getsize(path) / 1e6
    build = lambda: EpisodeWindowDataset([TrajectoryFile(path)], K)
    build_s = timed(build)
    ds = build()

    rng = np.random.default_rng(1)
    batches = [rng.integers(0, len(ds), 256) for _ in range(40 if quick else 200)]

    # Naive baseline: every key loaded into numpy, one Python slice per window and key, then stacked.
    with h5py.File(path, "r") as h5:
        obs, act, rew = h5["observations"][:], h5["actions"][:], h5["rewards"][:]
        done = h5["terminals"][:] | h5["timeouts"][:]
    rtg, ts = np.empty_like(rew), np.empty(len(rew), np.int64)
    start = 0
    for end in np.flatnonzero(done) + 1:  # naive per-episode loop, outside the timing
        for i in range(start, end):
            ts[i] = i - start
        rtg[start:end] = np.cumsum(rew[start:end][::-1])[::-1]
        start = end

    def naive(idx):
        cols = {"observations": [], "actions": [], "rewards": [], "rtg": [], "timesteps": []}
        for s in ds.starts[idx]:
            cols["observations"].append(obs[s:s + K])
            cols["actions"].append(act[s:s + K])
            cols["rewards"].append(rew[s:s + K])
            cols["rtg"].append(rtg[s:s + K])
            cols["timesteps"].append(ts[s:s + K])
        return {k: np.stack(v) for k, v in cols.items()}

    ref, got = naive(batches[0]), ds.__getitems__(batches[0])
    for k in ("observations", "actions", "rewards", "timesteps"):
        assert np.array_equal(ref[k], got[k].numpy()), k
    assert np.allclose(ref["rtg"], got["rtg"].numpy(), rtol=1e-4, atol=1e-3)
    t = compare({"fast": each(ds.__getitems__, batches), "naive": each(naive, batches)})
    fast_s, naive_s = t["fast"], t["naive"]
    nwin = 256 * len(batches)
    fast_wps, naive_wps = nwin / fast_s, nwin / naive_s
    os.remove(path)
    rows = [["`EpisodeWindowDataset.__getitems__` (batch 256)", fmt(fast_wps), fmt(fast_s / len(batches) * 1e3, 2),
             f"{fast_wps / naive_wps:.1f}x"],
            ["naive: numpy in RAM, Python loop per window + np.stack", fmt(naive_wps),
             fmt(naive_s / len(batches) * 1e3, 2), "1.0x"]]
    verdict = "met" if fast_wps >= 100_000 else "NOT met"
    return (markdown_table(["method", "windows/s", "ms / batch", "vs naive"], rows) +
            f"\n\n{n_steps:,} steps (4,000 episodes of 250; obs 24, action 6; {size_mb:.0f} MB, written in "
            f"{write_s:.1f} s), {len(ds):,} valid windows, {len(batches)} random batches of 256 per repetition. "
            f"Target >= 100,000 windows/s: **{verdict}**. One-time construction (`TrajectoryFile` incl. "
            f"validation + `EpisodeWindowDataset`): **{build_s:.2f} s** (median of {REPS}).")


# ---------------------------------------------------------------------------------------- 3. pixel windows
def bench_pixel_windows(quick):
    import h5py

    from control_pretrain.data.trajectory_file import TrajectoryFile
    from control_pretrain.data.windows import EpisodeWindowDataset

    n_steps = 5_000 if quick else 20_000
    path = write_file(os.path.join(WORK, "pixels_small.h5"), n_steps, pixels=True)
    size_mb = os.path.getsize(path) / 1e6
    warm_page_cache(path)
    rng = np.random.default_rng(2)
    disk = EpisodeWindowDataset([TrajectoryFile(path, load_pixels=True)], K, state=False, pixels=True)
    batches = [rng.integers(0, len(disk), 32) for _ in range(10 if quick else 30)]
    nwin = 32 * len(batches)
    t = time.perf_counter()
    ram = EpisodeWindowDataset([TrajectoryFile(path, load_pixels=True)], K, state=False, pixels=True,
                               pixel_cache_bytes=4 << 30)
    load_s = time.perf_counter() - t
    assert ram.files[0].pixels._ram is not None

    naive_h5 = h5py.File(path, "r")  # default 1 MB chunk cache
    naive_dset = naive_h5["pixels"]

    def naive(idx):
        return np.stack([naive_dset[s:s + K] for s in disk.starts[idx]])

    # The h5py fallback (compressed or filtered files): the same reader with its raw chunk offsets switched off.
    fallback = EpisodeWindowDataset([TrajectoryFile(path, load_pixels=True)], K, state=False, pixels=True)
    fallback.__getitems__(batches[0])  # opens the file (and maps its chunks) in this process
    assert disk.__getitems__(batches[0]) and disk.files[0].pixels._chunks is not None  # the raw-offset path
    fallback.files[0].pixels._chunks = None

    ref = naive(batches[0])
    assert np.array_equal(ref, disk.__getitems__(batches[0])["pixels"].numpy())
    assert np.array_equal(ref, ram.__getitems__(batches[0])["pixels"].numpy())
    assert np.array_equal(ref, fallback.__getitems__(batches[0])["pixels"].numpy())
    fns = {"disk": disk.__getitems__, "ram": ram.__getitems__, "naive": naive, "h5py": fallback.__getitems__}
    results = {k: nwin / t for k, t in compare({k: each(fn, batches) for k, fn in fns.items()}).items()}
    naive_h5.close()
    rows = [["`__getitems__`, from disk: `os.preadv` at the raw chunk offsets (page cache warm, `pixel_cache_bytes=0`)",
             results["disk"]],
            ["`__getitems__`, from disk: h5py `read_direct` (the fallback for compressed files)", results["h5py"]],
            ["`__getitems__`, RAM cache (`pixel_cache_bytes` >= file)", results["ram"]],
            ["naive: `dset[s:s+K]` per window, default 1 MB chunk cache, np.stack", results["naive"]],
            ]
    rows = [[name, fmt(w), fmt(w * K * 84 * 84 * 3 / 1e6), f"{w / results['naive']:.1f}x"] for name, w in rows]
    return (path, markdown_table(["method", "windows/s", "MB/s", "vs naive"], rows) +
            f"\n\n{n_steps:,} frames (3x84x84 uint8, {size_mb:.0f} MB), {len(batches)} random batches of 32 windows "
            f"per repetition. Loading the file into the RAM cache took {load_s:.2f} s. Target >= 1,000 pixel "
            f"windows/s: from disk **{'met' if results['disk'] >= 1000 else 'NOT met'}**, "
            f"from RAM **{'met' if results['ram'] >= 1000 else 'NOT met'}**.")


# ------------------------------------------------------------------------------------------- 4. peak memory
def memory_child(path, budget, n_batches):
    """Runs in a fresh process: prints JSON with the peak RSS before/after building the dataset and sampling."""
    import torch  # noqa: F401  (imported by the dataset anyway; counted in the baseline)

    from control_pretrain.data.trajectory_file import TrajectoryFile
    from control_pretrain.data.windows import EpisodeWindowDataset

    def kb():
        # VmHWM, the peak RSS of this process image. ru_maxrss would do in a fresh interpreter, but on Linux it
        # carries over the parent's peak through fork/exec (checked: a child of a 500 MB parent reports 505 MB).
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024
    base = kb()
    t = time.perf_counter()
    ds = EpisodeWindowDataset([TrajectoryFile(path, load_pixels=True)], K, state=False, pixels=True,
                              pixel_cache_bytes=budget)
    build_s = time.perf_counter() - t
    cached = ds.files[0].pixels._ram is not None
    rng = np.random.default_rng(3)
    t = time.perf_counter()
    for _ in range(n_batches):
        ds.__getitems__(rng.integers(0, len(ds), 32))
    sample_s = time.perf_counter() - t
    print(json.dumps({"base": base, "peak": kb(), "cached": cached, "build_s": build_s,
                      "wps": 32 * n_batches / sample_s}))


def run_child(path, budget, n_batches=300):
    out = subprocess.run([sys.executable, __file__, "--_memory-child", path, str(budget), str(n_batches)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_memory(quick, small_path):
    n_steps = 20_000 if quick else 100_000
    budget = (200 << 20) if quick else (1 << 30)
    big = write_file(os.path.join(WORK, "pixels_big.h5"), n_steps, pixels=True)
    size = os.path.getsize(big)
    warm_page_cache(big)
    cases = [(f"{size / 1e9:.2f} GB file, budget {budget >> 20} MiB (file > budget)", big, budget),
             (f"{os.path.getsize(small_path) / 1e9:.2f} GB file, budget 4 GiB (file cached in RAM)", small_path,
              4 << 30)]
    all_runs = [[] for _ in cases]
    for _ in range(REPS):  # round-robin over the cases
        for runs, (_, path, b) in zip(all_runs, cases):
            runs.append(run_child(path, b))
    rows = []
    for runs, (name, path, b) in zip(all_runs, cases):
        peak, base, build_s, wps = (statistics.median(r[k] for r in runs) for k in ("peak", "base", "build_s", "wps"))
        limit = b + (1 << 30)
        rows.append([name, "yes" if runs[0]["cached"] else "no", fmt(base / 2**20), fmt(peak / 2**20),
                     fmt((peak - base) / 2**20), f"{build_s:.2f}", fmt(wps),
                     ("under " if peak < limit else "**OVER** ") + fmt(limit / 2**20) if b < size else "-"])
        print(rows[-1], flush=True)
    os.remove(big)
    return (markdown_table(["case", "frames in RAM", "RSS after imports MiB", "peak RSS MiB", "peak - imports MiB",
                   "build s", "windows/s", "target: peak < budget + 1 GiB"], rows) +
            f"\n\nEach case runs in a fresh subprocess (300 random batches of 32 windows); peak RSS = `VmHWM` of "
            f"/proc/self/status (`ru_maxrss` of a child inherits the parent's peak across fork/exec on Linux, so it "
            f"is not clean); all columns are medians of {REPS} subprocesses. `pixel_cache_bytes` is granted per "
            f"whole file: a file larger than the budget gets no RAM cache at all and is read from disk.")


# ------------------------------------------------------------------------------------------------- report
def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    simd = "AVX-512" if "avx512f" in lscpu else "AVX2" if "avx2" in lscpu else "no AVX2"
    return (f"{os.cpu_count()} cores, {cpu_model()} ({simd}), "
            f"{ram:.0f} GiB RAM")





def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 1-2 min instead of 3-4)")
    p.add_argument("--out", help="markdown file whose data section is written/replaced, e.g. docs/benchmarks.md")
    p.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._memory_child:
        path, budget, n = args._memory_child
        return memory_child(path, int(budget), int(n))

    os.makedirs(WORK, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    parts = []

    def report(title, result):
        print(f"== {title}\n{result}\n", flush=True)
        parts.append(f"### {title}\n\n{result}\n")

    try:
        report("Collection speed", bench_collection(args.quick))
        report("State windows (K=30)", bench_state_windows(args.quick))
        small_path, result = bench_pixel_windows(args.quick)
        report("Pixel windows (K=30, 84x84)", result)
        report("Peak memory", bench_memory(args.quick, small_path))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    cmd = "python benchmarks/bench_data.py" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out
                                                                                    else "")
    total = time.perf_counter() - t0
    head = (f"{SECTION}\n\n- Date: {datetime.date.today().isoformat()}{' (quick mode)' if args.quick else ''}\n"
            f"- Machine: {machine()}; Python {platform.python_version()}; MUJOCO_GL="
            f"{os.environ.get('MUJOCO_GL')}\n- Command: `{cmd}` (total {total / 60:.1f} min)\n"
            f"- 1-min load average at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}\n")
    body = head + "\n" + "\n".join(parts)
    if args.out:
        write_section(args.out, SECTION, body)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
