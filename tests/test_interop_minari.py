"""export-minari / import-minari against the real ``minari`` package (its hdf5 extra): a small real walker-walk
dataset goes out, ``minari.load_dataset`` reads it back with N + 1 observations per episode, and import-minari
restores our file exactly. Minari's root is a tmp folder (MINARI_DATASETS_PATH)."""

import sys

import minari  # the test extra installs .[minari], so CI always runs the real package
import numpy as np
import pytest
from conftest import run_script
from dmc_rollouts import rollout

from control_pretrain.cli.data import main
from control_pretrain.data.schema import open_h5, read_attrs
from control_pretrain.envs.dmc import make_env

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "physics")
DATASET_ID = "dmc/walker-walk/random-v0"


@pytest.fixture(scope="module")
def walker(tmp_path_factory):
    """Two random walker-walk episodes from our collector, their arrays, and the final observation of each episode
    as the environment returned it (replayed from the same seed: resets and actions reproduce the run exactly)."""
    root = tmp_path_factory.mktemp("walker")
    res = run_script("dmc_data.py", "collect", "--domain", "walker", "--task", "walk", "--num_steps", "500",
                     "--data_dir_prefix", str(root), "--quiet")
    assert res.returncode == 0, res.stderr
    path = root / "randcollect_walker_walk" / "walker_walk_s1.h5"
    with open_h5(str(path)) as h5:
        data = {k: h5[k][:] for k in KEYS}
    env = make_env("walker", "walk", seed=1, action_repeat=4)
    finals = []
    for start in (0, 250):
        assert np.array_equal(env.reset(), data["observations"][start])
        for action in data["actions"][start:start + 250]:
            obs, *_ = env.step(action)
        finals.append(obs)
    env.close()
    return path, data, finals


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_export_load_and_import_round_trip(walker, minari_root, tmp_path, capsys):
    path, data, finals = walker
    assert main(["export-minari", str(path), "--dataset_id", DATASET_ID]) == 0

    dataset = minari.load_dataset(DATASET_ID)
    assert dataset.total_episodes == 2 and dataset.total_steps == 500
    for episode, start, final in zip(dataset.iterate_episodes(), (0, 250), finals, strict=True):
        rows = slice(start, start + 250)
        assert episode.observations.shape == (251, 24)  # N + 1, as Minari stores them
        np.testing.assert_array_equal(episode.observations[:250], data["observations"][rows])
        np.testing.assert_allclose(episode.observations[250], final, atol=1e-4)  # rebuilt from the last state
        np.testing.assert_array_equal(episode.actions, data["actions"][rows])
        np.testing.assert_array_equal(episode.rewards, data["rewards"][rows])
        np.testing.assert_array_equal(episode.terminations, data["terminals"][rows])
        np.testing.assert_array_equal(episode.truncations, data["timeouts"][rows])
        np.testing.assert_array_equal(episode.infos["physics"][:250], data["physics"][rows])

    assert main(["export-minari", str(path), "--dataset_id", DATASET_ID]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err

    out = tmp_path / "back.h5"
    assert main(["import-minari", DATASET_ID, "--out", str(out)]) == 0
    with open_h5(str(out)) as back, open_h5(str(path)) as original:
        for key in KEYS:
            np.testing.assert_array_equal(back[key][:], data[key], err_msg=key)
        a, b = read_attrs(original), read_attrs(back)
        for attr in ("domain", "task", "policy", "seed", "replay_id", "action_repeat", "obs_keys"):
            assert a[attr] == b[attr], attr


def test_export_refuses_a_task_whose_observation_is_not_in_the_state(tmp_path, minari_root, capsys):
    res = run_script("dmc_data.py", "collect", "--domain", "reacher", "--task", "easy", "--num_steps", "250",
                     "--data_dir_prefix", str(tmp_path), "--quiet")
    assert res.returncode == 0, res.stderr
    path = tmp_path / "randcollect_reacher_easy" / "reacher_easy_s1.h5"
    assert main(["export-minari", str(path), "--dataset_id", "reacher-easy-v0"]) == 2
    assert "depends on more than physics.get_state()" in capsys.readouterr().err
    assert list(minari_root.iterdir()) == []  # no dataset, no hidden temporary folder


@pytest.mark.filterwarnings("ignore:.*(is set to None|env_spec is None).*:UserWarning")  # optional metadata
def test_import_a_dataset_written_by_minari_itself(tmp_path, minari_root):
    """A dataset made with Minari's own API, without our metadata or physics: domain and task come from the id."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    (ep,) = rollout("cartpole", "swingup", episodes=1, action_repeat=4)
    n = len(ep["actions"])
    minari.create_dataset_from_buffers(
        "dmc/cartpole-swingup/foreign-v0",
        [EpisodeBuffer(observations=ep["observations"].astype(np.float32), actions=ep["actions"],
                       rewards=ep["rewards"], terminations=np.zeros(n, bool), truncations=ep["timeouts"])],
        observation_space=gym.spaces.Box(-np.inf, np.inf, (5,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (1,), np.float32), algorithm_name="random",
    )
    assert main(["import-minari", "dmc/cartpole-swingup/foreign-v0", "--data_dir_prefix", str(tmp_path)]) == 0
    with open_h5(str(tmp_path / "minari" / "dmc" / "cartpole-swingup" / "foreign-v0.h5")) as h5:
        assert h5.attrs["domain"] == "cartpole" and h5.attrs["task"] == "swingup" and h5.attrs["policy"] == "random"
        np.testing.assert_array_equal(h5["observations"][:], ep["observations"][:n].astype(np.float32))
        np.testing.assert_array_equal(h5["actions"][:], ep["actions"])
        assert h5["timeouts"][-1] and np.isnan(h5["physics"][:]).all()


def test_without_minari_installed_exits_2_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "minari", None)  # what `import minari` meets when the extra is absent
    assert main(["export-minari", str(tmp_path / "any.h5"), "--dataset_id", "dmc/walker-walk/random-v0"]) == 2
    assert "pip install -e .[minari]" in capsys.readouterr().err


def test_import_of_an_unknown_id_exits_2_saying_where_it_looked(minari_root, tmp_path, capsys):
    assert main(["import-minari", "dmc/walker-walk/nothing-v0", "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert str(minari_root) in err and "minari list local" in err
    assert main(["import-minari", "not an id", "--out", str(tmp_path / "x.h5")]) == 2
    assert "not a Minari dataset id" in capsys.readouterr().err


def test_export_with_an_action_repeat_that_does_not_divide_the_time_limit(tmp_path, minari_root):
    """Action repeat 3: the last of 334 steps ran one physics step only; the rebuilt one must stop there too."""
    assert main(["collect", "--domain", "cartpole", "--task", "swingup", "--num_steps", "334", "--action_repeat", "3",
                 "--data_dir_prefix", str(tmp_path), "--quiet", "--workers", "1"]) == 0
    path = tmp_path / "randcollect_cartpole_swingup" / "cartpole_swingup_s1.h5"
    assert main(["export-minari", str(path), "--dataset_id", "cartpole-swingup-v0"]) == 0
    (episode,) = minari.load_dataset("cartpole-swingup-v0").iterate_episodes()
    env = make_env("cartpole", "swingup", seed=1, action_repeat=3)
    env.reset()
    for action in episode.actions:
        obs, *_ = env.step(action)
    env.close()
    assert len(episode.actions) == 334
    np.testing.assert_allclose(episode.observations[-1], obs, atol=1e-5)
