"""Heteromodal data (``--data.action_label_fraction``): which training episodes keep their actions, and that the
others can never leak them (zero actions, ``has_action`` False); validation is always labelled."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_synthetic

from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.data.schema import dataset_path
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.data.windows import EpisodeWindowDataset
from control_pretrain.errors import DatasetError

EPISODES, LENGTH, K = 40, 6, 3  # per file; val_fraction 0.1 leaves 36 training episodes


@pytest.fixture
def synthetic_data(tmp_path):
    """Two replay files of cartpole-swingup, 40 episodes each; every action encodes its (nonzero) episode id."""
    prefix = tmp_path / "data"
    for replay_id in (1, 2):
        path = Path(dataset_path(str(prefix), "randcollect", "cartpole", "swingup", replay_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic(path, [LENGTH] * EPISODES, first_id=100 * replay_id, seed=replay_id)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"cartpole": ["swingup"]}))
    return {"multi_config": str(tasks), "data_dir_prefix": str(prefix), "train_replay_id": 2, "obs_type": "state",
            "context_length": K, "val_fraction": 0.1, "num_workers": 0}


def datamodule(kwargs: dict, **overrides) -> MultiTaskDataModule:
    dm = MultiTaskDataModule(**{**kwargs, **overrides})
    dm.setup()
    return dm


def window_episodes(ds: EpisodeWindowDataset) -> tuple[np.ndarray, np.ndarray]:
    """(W,) file and (W,) episode number of every window."""
    local = ds.starts - ds.file_offsets[ds.window_file]
    return ds.window_file, np.array([ds.files[f].index.episode_of_step()[s] for f, s in zip(ds.window_file, local)])


def labelled_per_file(ds: EpisodeWindowDataset) -> list[set[int]]:
    has = ds.__getitems__(np.arange(len(ds)))["has_action"].numpy()
    files, eps = window_episodes(ds)
    return [set(eps[(files == f) & has].tolist()) for f in range(len(ds.files))]


def train_episodes_per_file(ds: EpisodeWindowDataset) -> list[np.ndarray]:
    files, eps = window_episodes(ds)
    return [np.unique(eps[files == f]) for f in range(len(ds.files))]


def test_labelled_count_is_a_seeded_choice_not_the_first_episodes(synthetic_data, caplog):
    with caplog.at_level(logging.INFO, logger="control_pretrain.data.datamodules.pretrain"):
        dm = datamodule(synthetic_data, action_label_fraction=0.1)
    train = train_episodes_per_file(dm.train_set)
    assert [len(t) for t in train] == [36, 36]
    for labelled, eps in zip(labelled_per_file(dm.train_set), train):
        assert len(labelled) == round(0.1 * 36)  # 4 per file
        assert labelled <= set(eps.tolist())  # training episodes only
        assert labelled != set(eps[:4].tolist())  # not the first ones in file order (the reference's choice)
    assert "action labels on 8 of 72 training episodes" in caplog.text
    tiny = datamodule(synthetic_data, action_label_fraction=0.001)
    assert [len(s) for s in labelled_per_file(tiny.train_set)] == [1, 1]  # at least one per file


def test_labelled_choice_is_deterministic_per_seed(synthetic_data):
    a, b = (labelled_per_file(datamodule(synthetic_data, action_label_fraction=0.25).train_set) for _ in range(2))
    assert a == b
    other = labelled_per_file(datamodule(synthetic_data, action_label_fraction=0.25, split_seed=1).train_set)
    assert other != a


def test_unlabelled_windows_have_no_actions_and_validation_is_labelled(synthetic_data):
    dm = datamodule(synthetic_data, action_label_fraction=0.1)
    full = datamodule(synthetic_data)
    batch = dm.train_set.__getitems__(np.arange(len(dm.train_set)))
    reference = full.train_set.__getitems__(np.arange(len(full.train_set)))
    has = batch["has_action"]
    assert has.dtype == torch.bool and has.shape == (len(dm.train_set),) and 0 < has.sum() < len(has)
    assert torch.all(batch["actions"][~has] == 0)
    assert torch.equal(batch["actions"][has], reference["actions"][has])  # labelled ones untouched
    assert torch.all(reference["actions"][~has] != 0)  # the zeros are the masking, not the data
    for key in ("observations", "rewards", "rtg", "rtg_avg", "timesteps"):
        assert torch.equal(batch[key], reference[key])
    val = dm.val_set.__getitems__(np.arange(len(dm.val_set)))
    assert val["has_action"].all() and torch.all(val["actions"] != 0)


def test_full_fraction_changes_nothing_but_has_action(synthetic_data):
    dm = datamodule(synthetic_data)  # action_label_fraction 1.0
    batch = dm.train_set.__getitems__(np.arange(len(dm.train_set)))
    files = [TrajectoryFile(f.path) for f in dm.train_set.files]
    train = train_episodes_per_file(dm.train_set)
    direct = EpisodeWindowDataset(files, K, episodes=train, task_ids=[0, 0], obs_layout=dm.obs_layout,
                                  action_layout=dm.action_layout)
    expected = direct.__getitems__(np.arange(len(direct)))
    assert batch["has_action"].all() and batch.keys() == expected.keys()
    assert all(torch.equal(batch[k], expected[k]) for k in batch)


def test_dataset_labels_follow_the_given_episodes(tmp_path):
    write_synthetic(tmp_path / "a.h5", [4, 5, 6], first_id=1)
    f = TrajectoryFile(str(tmp_path / "a.h5"))
    ds = EpisodeWindowDataset([f], K, labelled_episodes=[np.array([1])])
    batch = ds.__getitems__(np.arange(len(ds)))
    _, eps = window_episodes(ds)
    np.testing.assert_array_equal(batch["has_action"].numpy(), eps == 1)
    assert torch.all((batch["actions"][..., 0] != 0) == batch["has_action"][:, None])


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_fraction_outside_zero_one_is_a_clear_error(synthetic_data, fraction):
    with pytest.raises(DatasetError, match=rf"--data.action_label_fraction must be in \(0, 1\].*not {fraction}"):
        MultiTaskDataModule(**synthetic_data, action_label_fraction=fraction)
