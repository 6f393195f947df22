"""The dataset file: collect -> inspect round trip, atomic writes, and a clear error for every kind of bad file."""

import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import ROOT, SRC, run_script, synthetic_episode, write_synthetic

from control_pretrain.data.schema import validate
from control_pretrain.data.writer import TrajectoryWriter
from control_pretrain.errors import DatasetError


def test_collect_inspect_round_trip(collected_dir):
    path = collected_dir / "randcollect_cartpole_swingup" / "cartpole_swingup_s2.h5"
    info = validate(str(path))
    assert info.num_steps == 1000 and info.num_episodes == 4
    assert list(info.episode_lengths) == [250] * 4
    assert info.attrs["domain"] == "cartpole" and info.attrs["replay_id"] == 2 and info.attrs["seed"] == 2
    assert info.attrs["obs_keys"] == ["position", "velocity"] and info.obs_dim == 5
    with h5py.File(path) as h5:
        assert np.abs(h5["actions"][:]).max() <= 1.0
        assert h5["rewards"][:].min() >= 0 and h5["rewards"][:].max() <= 4
        # Alignment: the physics state of row i+1 is what stepping row i's action from row i led to.
        assert not np.array_equal(h5["physics"][0], h5["physics"][1])
    res = run_script("dmc_data.py", "inspect", str(path))
    assert res.returncode == 0, res.stderr
    assert "episodes=4" in res.stdout and "cartpole-swingup" in res.stdout and "returns" in res.stdout


def test_collected_returns_match_a_replay_in_the_simulator(collected_dir):
    """Replaying the recorded actions from the recorded seed reproduces the recorded rewards and observations."""
    from control_pretrain.envs.dmc import make_env

    path = collected_dir / "randcollect_pendulum_swingup" / "pendulum_swingup_s1.h5"
    with h5py.File(path) as h5:
        obs, actions, rewards = h5["observations"][:250], h5["actions"][:250], h5["rewards"][:250]
    env = make_env("pendulum", "swingup", seed=1)
    np.testing.assert_array_equal(env.reset(), obs[0])
    for i in range(249):
        o, r, _, _ = env.step(actions[i])
        assert r == pytest.approx(rewards[i], abs=1e-5)
        np.testing.assert_allclose(o, obs[i + 1], atol=1e-6)


def test_pixels_are_collected(tmp_path):
    res = run_script("dmc_data.py", "collect", "--domain", "cartpole", "--task", "balance", "--num_steps", "10",
                     "--pixels", "--fast_render", "--data_dir_prefix", str(tmp_path), "--quiet")
    assert res.returncode == 0, res.stderr
    info = validate(str(tmp_path / "randcollect_cartpole_balance" / "cartpole_balance_s1.h5"))
    assert info.pixel_shape == (3, 84, 84) and info.num_steps == 250 and info.attrs["render_fast"]


def test_existing_file_is_not_overwritten(collected_dir):
    path = collected_dir / "randcollect_cartpole_swingup" / "cartpole_swingup_s1.h5"
    before = path.read_bytes()
    res = run_script("dmc_data.py", "collect", "--domain", "cartpole", "--task", "swingup", "--num_steps", "250",
                     "--data_dir_prefix", str(collected_dir), "--quiet")
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert path.read_bytes() == before


def test_writer_failure_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "d.h5"
    write_synthetic(path, [40])
    before = path.read_bytes()
    attrs = {"domain": "cartpole", "task": "swingup", "policy": "random", "seed": 0, "replay_id": 1,
             "action_repeat": 4, "obs_keys": ["position"]}
    with pytest.raises(RuntimeError), TrajectoryWriter(str(path), attrs, 3, 2, 2) as w:
        w.append_episode(synthetic_episode(30, 1))
        raise RuntimeError("crash mid-collection")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.h5"]


def test_interrupted_collection_leaves_no_file(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(SRC, "dmc_data.py"), "collect", "--domain", "cheetah",
                             "--task", "run", "--num_steps", "1000000", "--data_dir_prefix", str(tmp_path),
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "randcollect_cheetah_run"
    deadline = time.time() + 60
    while time.time() < deadline and not (folder.exists() and any(folder.iterdir())):
        time.sleep(0.2)
    time.sleep(1.0)  # let it write a few episodes into the temporary file
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list(folder.iterdir()) == []  # neither the final name nor a temporary file


def _bad_files(tmp_path):
    good = tmp_path / "good.h5"
    write_synthetic(good, [30, 30])
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["obs"] = np.zeros((10, 3), np.float32)
    text = tmp_path / "notes.h5"
    text.write_text("not a dataset")
    cases = {
        "missing": (tmp_path / "absent.h5", "no such file"),
        "truncated": (truncated, "truncated"),
        "foreign": (foreign, "missing key"),
        "not hdf5": (text, "not an HDF5 file"),
    }
    for name, edit, needle in [
        ("short actions", lambda h5: (h5.__delitem__("actions"), h5.create_dataset("actions", data=np.zeros((59, 2), np.float32))), "59 rows"),
        ("wrong rank", lambda h5: (h5.__delitem__("rewards"), h5.create_dataset("rewards", data=np.zeros((60, 2), np.float32))), "shape (60, 2)"),
        ("wrong dtype", lambda h5: (h5.__delitem__("actions"), h5.create_dataset("actions", data=np.zeros((60, 2), np.float64))), "dtype float64"),
        ("mid-episode end", lambda h5: h5["timeouts"].__setitem__(59, False), "ends no episode"),
        ("missing attr", lambda h5: h5.attrs.__delitem__("domain"), "missing file attribute"),
    ]:
        p = tmp_path / f"{name.replace(' ', '_')}.h5"
        p.write_bytes(good.read_bytes())
        with h5py.File(p, "a") as h5:
            edit(h5)
        cases[name] = (p, needle)
    return cases


def test_bad_files_give_clear_errors(tmp_path):
    for name, (path, needle) in _bad_files(tmp_path).items():
        with pytest.raises(DatasetError, match=re.escape(needle)) as err:
            validate(str(path))
        assert str(path) in str(err.value), name


def test_inspect_bad_file_exits_nonzero_without_traceback(tmp_path):
    cases = _bad_files(tmp_path)
    for name in ("truncated", "foreign", "short actions"):
        path, needle = cases[name]
        res = run_script("dmc_data.py", "inspect", str(path))
        assert res.returncode == 2, name
        assert needle in res.stderr and str(path) in res.stderr and "Traceback" not in res.stderr


def test_unknown_task_on_the_cli(tmp_path):
    res = run_script("dmc_data.py", "collect", "--domain", "cheetah", "--task", "fly", "--data_dir_prefix",
                     str(tmp_path), "--quiet")
    assert res.returncode == 2 and "unknown task 'fly'" in res.stderr and "Traceback" not in res.stderr
