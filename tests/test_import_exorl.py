"""import-exorl: a folder of URLB-style .npz episodes (dummy first row, physics kept) built from a real dm_control
rollout becomes one of our files; rewards are relabelled from physics as ExORL's loader does."""

import numpy as np
import pytest
from dmc_rollouts import rollout

from control_pretrain.cli.data import main
from control_pretrain.data.schema import open_h5, validate

STEPS = 1000  # URLB: no action repeat, dm_control's 1000-step limit


@pytest.fixture(scope="module")
def episodes():
    return rollout("cartpole", "swingup", episodes=2, action_repeat=1)


def write_exorl(folder, episodes, indices, zero_rewards=False):
    """denisyarats/exorl's layout: row 0 is the reset (zero action, zero reward, discount 1), row i the step that
    led to observation i; file names {timestamp}_{idx}_{len}.npz."""
    folder.mkdir(parents=True)
    for idx, ep in zip(indices, episodes, strict=True):
        n = len(ep["actions"])
        reward = np.concatenate([[0.0], np.zeros(n) if zero_rewards else ep["rewards"]])[:, None].astype(np.float32)
        np.savez_compressed(
            folder / f"20220101T000000_{idx}_{n}.npz",
            observation=ep["observations"].astype(np.float32),
            action=np.concatenate([np.zeros((1, ep["actions"].shape[1]), np.float32), ep["actions"]]),
            reward=reward,
            discount=np.ones((n + 1, 1), np.float32),
            physics=ep["physics"],
        )


def test_import_exorl_drops_the_dummy_row_and_relabels(tmp_path, episodes):
    buffer = tmp_path / "datasets" / "cartpole" / "rnd" / "buffer"
    # ids 2 and 10: file-name order differs from ExORL's episode-index order
    write_exorl(buffer, episodes, indices=(2, 10), zero_rewards=True)
    out, kept = tmp_path / "relabelled.h5", tmp_path / "stored.h5"
    assert main(["import-exorl", str(buffer.parent), "--task", "swingup", "--out", str(out)]) == 0
    assert main(["import-exorl", str(buffer), "--task", "swingup", "--out", str(kept), "--no_relabel"]) == 0

    info = validate(str(out))
    assert info.num_episodes == 2 and list(info.episode_lengths) == [STEPS, STEPS]
    with open_h5(str(out)) as h5:
        assert h5.attrs["domain"] == "cartpole" and h5.attrs["policy"] == "rnd"  # from .../cartpole/rnd/buffer
        assert h5.attrs["action_repeat"] == 1
        np.testing.assert_array_equal(h5["observations"][:],
                                      np.concatenate([ep["observations"][:-1] for ep in episodes]))
        np.testing.assert_array_equal(h5["actions"][:], np.concatenate([ep["actions"] for ep in episodes]))
        np.testing.assert_array_equal(h5["physics"][:],
                                      np.concatenate([ep["physics"][:-1] for ep in episodes]).astype(np.float32))
        assert np.flatnonzero(h5["timeouts"][:]).tolist() == [STEPS - 1, 2 * STEPS - 1]
        relabelled = h5["rewards"][:]
    # the stored rewards were zeroed; relabelling from physics gives back what the environment paid
    np.testing.assert_allclose(relabelled, np.concatenate([ep["rewards"] for ep in episodes]), atol=1e-6)
    with open_h5(str(kept)) as h5:
        assert not h5["rewards"][:].any()


def test_import_exorl_bad_episode_exits_2_naming_file_and_key(tmp_path, episodes, capsys):
    buffer = tmp_path / "buffer"
    write_exorl(buffer, episodes[:1], indices=(0,))
    (path,) = buffer.glob("*.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "physics"})
    assert main(["import-exorl", str(buffer), "--domain", "cartpole", "--task", "swingup",
                 "--out", str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "missing key(s) ['physics']" in err

    arrays["action"][0] = 0.5  # no dummy first row: not ExORL's layout
    np.savez(path, **arrays)
    assert main(["import-exorl", str(buffer), "--domain", "cartpole", "--task", "swingup",
                 "--out", str(tmp_path / "b.h5")]) == 2
    assert "dummy zero action" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.h5*"))
