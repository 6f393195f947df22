"""import-d4rl: a D4RL-layout HDF5 file built from a real dm_control rollout becomes one of our files with the
same episodes, arrays and (from infos/qpos, infos/qvel) physics states."""

import h5py
import numpy as np
import pytest
from dmc_rollouts import rollout

from control_pretrain.cli.data import main
from control_pretrain.data.schema import open_h5, validate
from control_pretrain.envs.dmc import make_env


@pytest.fixture(scope="module")
def episodes():
    return rollout("cartpole", "swingup", episodes=3, action_repeat=4)


def write_d4rl(path, episodes, cut_last: int = 0, skip: tuple[str, ...] = ()):
    """D4RL's flat layout (float64, as D4RL ships it); the last episode loses ``cut_last`` rows, so the file ends
    mid-episode like many of D4RL's own."""
    flat = {k: np.concatenate([ep[k][:-1] if k in ("observations", "qpos", "qvel") else ep[k] for ep in episodes])
            for k in ("observations", "qpos", "qvel", "actions", "rewards", "timeouts")}
    n = len(flat["actions"]) - cut_last
    with h5py.File(path, "w") as h5:
        h5["observations"] = flat["observations"][:n].astype(np.float64)
        h5["actions"] = flat["actions"][:n]
        h5["rewards"] = flat["rewards"][:n]
        h5["terminals"] = np.zeros(n, bool)
        h5["timeouts"] = flat["timeouts"][:n]
        h5["infos/qpos"] = flat["qpos"][:n]
        h5["infos/qvel"] = flat["qvel"][:n]
        for key in skip:
            del h5[key]


def test_import_d4rl_keeps_episodes_arrays_and_physics(tmp_path, episodes):
    src, out = tmp_path / "cartpole.hdf5", tmp_path / "out.h5"
    write_d4rl(src, episodes, cut_last=7)
    assert main(["import-d4rl", str(src), "--out", str(out), "--domain", "cartpole", "--task", "swingup"]) == 0

    info = validate(str(out))
    assert info.num_episodes == 2  # the cut third episode is dropped, not imported half
    assert list(info.episode_lengths) == [250, 250]
    kept = episodes[:2]
    with open_h5(str(out)) as h5:
        np.testing.assert_array_equal(h5["observations"][:],
                                      np.concatenate([ep["observations"][:-1] for ep in kept]).astype(np.float32))
        np.testing.assert_array_equal(h5["actions"][:], np.concatenate([ep["actions"] for ep in kept]))
        np.testing.assert_array_equal(h5["rewards"][:],
                                      np.concatenate([ep["rewards"] for ep in kept]).astype(np.float32))
        assert np.flatnonzero(h5["timeouts"][:]).tolist() == [249, 499] and not h5["terminals"][:].any()
        physics = h5["physics"][:]
        assert h5.attrs["domain"] == "cartpole" and h5.attrs["action_repeat"] == 4
    states = np.concatenate([ep["physics"][:-1] for ep in kept])
    np.testing.assert_array_equal(physics, states.astype(np.float32))
    env = make_env("cartpole", "swingup")  # the states are the ones behind the observations
    assert np.allclose(env.restore(physics[300]), kept[1]["observations"][50], atol=1e-5)
    env.close()


def test_import_d4rl_bad_input_exits_2_naming_the_key(tmp_path, episodes, capsys):
    src = tmp_path / "no_timeouts.hdf5"
    write_d4rl(src, episodes[:1], skip=("timeouts",))
    assert main(["import-d4rl", str(src), "--out", str(tmp_path / "a.h5"), "--domain", "cartpole",
                 "--task", "swingup"]) == 2
    assert "missing key(s) ['timeouts']" in capsys.readouterr().err

    src = tmp_path / "ok.hdf5"
    write_d4rl(src, episodes[:1])
    assert main(["import-d4rl", str(src), "--out", str(tmp_path / "b.h5"), "--domain", "walker",
                 "--task", "walk"]) == 2  # cartpole data is 5 wide, walker's observations 24
    err = capsys.readouterr().err
    assert "'observations' has shape (250, 5), expected (250, 24)" in err and "--domain/--task" in err
    assert not (tmp_path / "b.h5").exists() and not list(tmp_path.glob("b.h5.tmp-*"))


def test_import_d4rl_without_states_writes_nan_physics(tmp_path, episodes):
    src, out = tmp_path / "no_infos.hdf5", tmp_path / "out.h5"
    write_d4rl(src, episodes[:1], skip=("infos/qpos", "infos/qvel"))
    assert main(["import-d4rl", str(src), "--out", str(out), "--domain", "cartpole", "--task", "swingup"]) == 0
    with open_h5(str(out)) as h5:
        assert h5["physics"].shape == (250, 4) and np.isnan(h5["physics"][:]).all()
