"""import-smart on real chunk files in the original SMART layout, made from a real dm_control run."""

from __future__ import annotations

import logging
import os
import zipfile
from itertools import pairwise

import numpy as np
import pytest
import torch

from control_pretrain.data.importers.smart import import_smart, load_chunk, parse_smart_path
from control_pretrain.data.schema import open_h5, validate
from control_pretrain.envs.dmc import make_env
from control_pretrain.errors import DatasetError

EPISODE = 250  # cartpole swingup, action repeat 4
EPISODES = 3
N = EPISODE * EPISODES
RUN = "cartpole_swingup_s3"


@pytest.fixture(scope="module")
def source():
    """The 7 SMART arrays of 3 random-action episodes (random frames instead of renders, to stay fast)."""
    env = make_env("cartpole", "swingup", seed=3)
    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "not_dones", "physics")}
    obs = env.reset()
    for _ in range(N):
        action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
        physics = env.physics_state()
        next_obs, reward, _, timeout = env.step(action)
        for key, value in zip(rows, (obs, next_obs, action, [reward], [1.0], physics), strict=True):
            rows[key].append(np.asarray(value, dtype=np.float32))
        obs = env.reset() if timeout else next_obs
    env.close()
    arrays = {k: np.stack(v) for k, v in rows.items()}
    arrays["pixels"] = rng.integers(0, 256, (N, 3, 84, 84), dtype=np.uint8)
    return arrays


def _buffer_dir(root, run=RUN, kind="randcollect"):
    domain_task = run.rsplit("_s", 1)[0]
    return os.path.join(root, f"{kind}_{domain_task}", run, run, "buffer")


def write_buffer(root, arrays, bounds=(0, 300, 600, N), run=RUN, kind="randcollect") -> str:
    """Chunks ``{start}_{end}.pt`` exactly as the SMART collector saved them (a list of 7 numpy arrays)."""
    buffer = _buffer_dir(str(root), run, kind)
    os.makedirs(buffer)
    for start, end in pairwise(bounds):
        torch.save([arrays[k][start:end] for k in ("obs", "next_obs", "actions", "rewards", "not_dones", "physics",
                                                    "pixels")], os.path.join(buffer, f"{start}_{end}.pt"))
    return buffer


def read(path):
    with open_h5(path) as h5:
        return {k: h5[k][:] for k in h5}, dict(h5.attrs)


@pytest.mark.parametrize("bounds", [(0, 300, 600, N), (0, N), (*range(0, N, 100), N)])
def test_import_round_trip(tmp_path, source, bounds):
    write_buffer(tmp_path / "src", source, bounds)
    out = str(tmp_path / "out.h5")
    calls = []
    info = import_smart(str(tmp_path / "src"), out, progress=lambda done, total: calls.append((done, total)))

    chunks = len(bounds) - 1
    assert calls == [(i, chunks) for i in range(1, chunks + 1)]
    assert info.num_steps == N and list(info.episode_lengths) == [EPISODE] * EPISODES
    assert validate(out).num_episodes == EPISODES
    data, attrs = read(out)
    # byte-identical values; episodes that cross chunk borders (e.g. 250..499 over row 300) are kept whole
    assert data["observations"].tobytes() == source["obs"].tobytes()
    assert data["actions"].tobytes() == source["actions"].tobytes()
    assert data["rewards"].tobytes() == source["rewards"].reshape(-1).tobytes()
    assert data["physics"].tobytes() == source["physics"].tobytes()
    assert data["pixels"].tobytes() == source["pixels"].tobytes()
    assert list(np.flatnonzero(data["timeouts"])) == [249, 499, 749]
    assert not data["terminals"].any()
    assert (attrs["domain"], attrs["task"]) == ("cartpole", "swingup")
    assert int(attrs["replay_id"]) == int(attrs["seed"]) == 3
    assert attrs["policy"] == "random" and attrs["source"] == "smart-import"
    assert list(info.attrs["obs_keys"]) == ["position", "velocity"]
    assert (int(attrs["render_height"]), int(attrs["render_width"]), int(attrs["render_camera"])) == (84, 84, 0)
    assert attrs["source_path"].endswith(os.path.join(RUN, "buffer"))


def test_buffer_folder_itself_and_partial_final_episode_dropped(tmp_path, source, caplog):
    buffer = write_buffer(tmp_path, source, bounds=(0, 300, 600), kind="fullcollect")  # episode 3 cut at row 600
    out = str(tmp_path / "out.h5")
    with caplog.at_level(logging.WARNING):
        info = import_smart(buffer, out)
    assert info.num_steps == 2 * EPISODE and list(info.episode_lengths) == [EPISODE, EPISODE]
    assert info.attrs["policy"] == "sac"
    assert "dropped the final 100 rows" in caplog.text
    assert read(out)[0]["pixels"].tobytes() == source["pixels"][:500].tobytes()


def test_buffer_starting_mid_episode(tmp_path, source, caplog):
    write_buffer(tmp_path, source, bounds=(300, 600, N))  # rows 300..499 are the tail of episode 2
    with caplog.at_level(logging.WARNING):
        info = import_smart(str(tmp_path), str(tmp_path / "out.h5"))
    assert list(info.episode_lengths) == [EPISODE]
    assert "dropped the first 200 rows (buffer rows 300..499)" in caplog.text
    assert read(str(tmp_path / "out.h5"))[0]["observations"].tobytes() == source["obs"][500:].tobytes()


def test_fallback_to_fixed_length_when_next_obs_is_empty(tmp_path, source, caplog):
    arrays = dict(source, next_obs=np.zeros_like(source["next_obs"]))
    write_buffer(tmp_path, arrays)
    with caplog.at_level(logging.WARNING):
        info = import_smart(str(tmp_path), str(tmp_path / "out.h5"))
    assert list(info.episode_lengths) == [EPISODE] * EPISODES
    assert "fixed episodes of 250 steps" in caplog.text


def test_true_termination_and_episode_len_check(tmp_path, source):
    not_dones = source["not_dones"].copy()
    not_dones[100] = 0  # an episode that terminates early
    write_buffer(tmp_path / "a", dict(source, not_dones=not_dones))
    info = import_smart(str(tmp_path / "a"), str(tmp_path / "a.h5"))
    assert list(info.episode_lengths) == [101, 149, EPISODE, EPISODE]
    data, _ = read(str(tmp_path / "a.h5"))
    assert list(np.flatnonzero(data["terminals"])) == [100]
    assert list(np.flatnonzero(data["timeouts"])) == [249, 499, 749]

    write_buffer(tmp_path / "b", source)
    with pytest.raises(DatasetError, match="episode_len is 200"):
        import_smart(str(tmp_path / "b"), str(tmp_path / "b.h5"), episode_len=200)
    assert not os.path.exists(tmp_path / "b.h5")


def test_non_contiguous_chunks(tmp_path, source):
    buffer = write_buffer(tmp_path, source)
    os.remove(os.path.join(buffer, "300_600.pt"))
    with pytest.raises(DatasetError, match=r"rows 300\.\.599 are missing between 0_300\.pt and 600_750\.pt"):
        import_smart(str(tmp_path), str(tmp_path / "out.h5"))
    assert not os.path.exists(tmp_path / "out.h5")


def _leave_marker(path):
    with open(path, "w") as f:
        f.write("code from the pickle ran")
    return path


class Booby:
    """Unpickling this runs ``_leave_marker``: what a hostile chunk would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _leave_marker, (self.marker,)


def test_pickled_code_is_not_run_without_trust(tmp_path, source):
    buffer = write_buffer(tmp_path, source)
    marker = tmp_path / "marker"
    chunk = [source[k][:300] for k in ("obs", "next_obs", "actions", "rewards", "not_dones", "physics")]
    torch.save([*chunk, Booby(str(marker))], os.path.join(buffer, "0_300.pt"))
    out = str(tmp_path / "out.h5")

    with pytest.raises(DatasetError, match="--trust-pickle") as err:
        import_smart(str(tmp_path), out)
    assert "0_300.pt" in str(err.value) and "beyond plain numpy arrays" in str(err.value)
    assert not marker.exists()
    assert not os.path.exists(out)

    with pytest.raises(DatasetError, match="item 'pixels' is str, expected a numeric numpy array"):
        import_smart(str(tmp_path), out, trust_pickle=True)
    assert marker.exists()  # trusted: the file's code ran, as the flag says it would
    assert not os.path.exists(out)


def test_safe_non_array_content_and_corrupt_chunks(tmp_path, source):
    buffer = write_buffer(tmp_path, source)
    torch.save({"obs": 1}, os.path.join(buffer, "0_300.pt"))  # loads safely, but is no chunk
    with pytest.raises(DatasetError, match="holds a dict, expected a list of 7 numpy arrays"):
        import_smart(str(tmp_path), str(tmp_path / "out.h5"))

    path = os.path.join(buffer, "300_600.pt")
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"300_600\.pt: the chunk cannot be read"):
        load_chunk(path)


def test_numpy1_pickles_load_safely(tmp_path, source):
    # numpy 1.x wrote numpy.core.multiarray._reconstruct where numpy 2 writes numpy._core.multiarray._reconstruct
    arrays = [source["obs"][:10], source["pixels"][:10], np.zeros((0, 2), np.float64)]
    new, old = str(tmp_path / "new.pt"), str(tmp_path / "old.pt")
    torch.save(arrays, new)
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for name in src.namelist():
            blob = src.read(name)
            if name.endswith("data.pkl"):
                blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray" in blob
            dst.writestr(name, blob)
    for path in (new, old):
        loaded = load_chunk(path)
        assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(loaded, arrays, strict=True))


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        import_smart(str(tmp_path / "nope"), str(tmp_path / "out.h5"))
    empty = _buffer_dir(str(tmp_path))
    os.makedirs(empty)
    with pytest.raises(DatasetError, match="no buffer folder"):
        import_smart(str(tmp_path), str(tmp_path / "out.h5"))
    with pytest.raises(DatasetError, match="no buffer folder"):
        import_smart(empty, str(tmp_path / "out.h5"))


def test_unknown_task_and_wrong_task(tmp_path, source):
    write_buffer(tmp_path / "a", source, run="foo_bar_s1")
    with pytest.raises(DatasetError, match=r"unknown dm_control domain 'foo'.*cartpole"):
        import_smart(str(tmp_path / "a"), str(tmp_path / "a.h5"))

    write_buffer(tmp_path / "b", source)
    with pytest.raises(DatasetError, match=r"'obs' has shape \(300, 5\), expected \(300, 3\) for pendulum/swingup"):
        import_smart(str(tmp_path / "b"), str(tmp_path / "b.h5"), domain="pendulum", task="swingup")


def test_interrupted_import_leaves_nothing(tmp_path, source):
    write_buffer(tmp_path / "src", source)
    out = tmp_path / "out" / "x.h5"

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_smart(str(tmp_path / "src"), str(out), progress=interrupt)
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize("path, expected", [
    ("d/randcollect_ball_in_cup_catch/ball_in_cup_catch_s1/ball_in_cup_catch_s1/buffer",
     ("ball_in_cup", "catch", 1, "random")),
    ("fullcollect_finger_turn_easy/finger_turn_easy_s12/finger_turn_easy_s12/buffer",
     ("finger", "turn_easy", 12, "sac")),
    ("x/point_mass_easy_s2/buffer", ("point_mass", "easy", 2, "unknown")),
    ("x/cartpole_balance_sparse_s5", ("cartpole", "balance_sparse", 5, "unknown")),
    ("x/y/buffer", (None, None, None, "unknown")),
])
def test_parse_smart_path(path, expected):
    parsed = parse_smart_path(path)
    assert (parsed.domain, parsed.task, parsed.replay_id, parsed.policy) == expected
