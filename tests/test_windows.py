"""Windows: never across episodes, files or tasks; exact RTG and timesteps; pixels; selection; DataLoader."""

import pickle

import h5py
import numpy as np
import pytest
import torch
from conftest import write_synthetic
from torch.utils.data import DataLoader

from control_pretrain.data.episodes import EpisodeIndex
from control_pretrain.data.slots import SlotLayout
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.data.windows import EpisodeWindowDataset, passthrough_collate
from control_pretrain.errors import DatasetError

K = 5


@pytest.fixture
def two_files(tmp_path):
    # Episodes of varied lengths, some shorter than K, ids unique across files.
    a = write_synthetic(tmp_path / "a.h5", [7, 3, 5, 12], first_id=0, domain="cartpole", obs_dim=3, action_dim=1)
    b = write_synthetic(tmp_path / "b.h5", [6, 9], first_id=100, domain="walker", obs_dim=4, action_dim=2, seed=1)
    files = [TrajectoryFile(str(tmp_path / "a.h5")), TrajectoryFile(str(tmp_path / "b.h5"))]
    return files, a + b


def test_windows_never_straddle_episodes_or_files(two_files):
    files, episodes = two_files
    ds = EpisodeWindowDataset(files, K)
    expected = sum(max(len(ep["actions"]) - K + 1, 0) for ep in episodes)
    assert len(ds) == expected
    batch = ds.__getitems__(np.arange(len(ds)))
    acts = batch["actions"]  # (W, K, A) padded
    ids = acts.abs().amax(-1) * 1000  # each episode's actions encode its id
    assert torch.all(ids == ids[:, :1]), "a window mixes episodes"
    assert len(np.unique(ds.starts)) == len(ds)
    assert torch.all(batch["timesteps"][:, 1:] - batch["timesteps"][:, :-1] == 1)


def test_slot_layout_pads_each_domain_into_its_own_slice(two_files):
    files, _ = two_files
    ds = EpisodeWindowDataset(files, K)
    assert ds.action_layout.slots == {"cartpole": (0, 1), "walker": (1, 2)}
    assert ds.obs_layout.slots == {"cartpole": (0, 3), "walker": (3, 4)}
    batch = ds.__getitems__(np.arange(len(ds)))
    walker = batch["domain_id"] == 1
    assert torch.all(batch["action_mask"][walker] == torch.tensor([0.0, 1.0, 1.0]))
    assert torch.all(batch["actions"][walker][..., 0] == 0) and torch.all(batch["observations"][walker][..., :3] == 0)
    assert torch.all(batch["observations"][~walker][..., 3:] == 0)
    assert set(batch["task_id"].tolist()) == {0, 1}


def test_one_slot_layout_for_arrays_tensors_and_checkpoints(two_files):
    """The layout the dataset pads with is the one rollouts and finetuning place observations with."""
    files, _ = two_files
    ds = EpisodeWindowDataset(files, K)
    layout = SlotLayout.from_dict(ds.obs_layout.to_dict())  # as a checkpoint stores and finetuning reads it
    assert layout == ds.obs_layout and layout.fits("walker", 4) and not layout.fits("walker", 3)
    assert not layout.fits("cheetah", 4)
    walker = ds.__getitems__(np.arange(len(ds)))
    walker_rows = walker["domain_id"] == 1
    own = walker["observations"][walker_rows][..., 3:]  # (n, K, 4): walker's own observations
    placed = layout.place("walker", own)  # a tensor stays a tensor, same dtype
    assert isinstance(placed, torch.Tensor) and placed.dtype == own.dtype
    assert torch.equal(placed, walker["observations"][walker_rows])
    np.testing.assert_array_equal(layout.place("walker", own.numpy()), placed.numpy())  # numpy: float32 too
    assert torch.equal(layout.take("walker", placed), own)
    assert SlotLayout.single("cartpole", 3).slots == {"cartpole": (0, 3)}


def test_returns_to_go_and_timesteps_match_a_naive_reference():
    rng = np.random.default_rng(0)
    done = rng.random(2000) < 0.01
    done[-1] = True
    rewards = rng.uniform(0, 4, 2000).astype(np.float32)
    index = EpisodeIndex.from_done(done)
    rtg, ts = index.returns_to_go(rewards), index.timesteps()
    naive_rtg, naive_ts, start = np.zeros(2000), np.zeros(2000, int), 0
    for end in np.flatnonzero(done) + 1:
        for j in range(start, end):
            naive_rtg[j] = sum(float(r) for r in rewards[j:end])
            naive_ts[j] = j - start
        start = end
    np.testing.assert_allclose(rtg, naive_rtg, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(ts, naive_ts)
    naive_starts = [s for s in range(2000) if s + K <= 2000 and not done[s : s + K - 1].any()]
    np.testing.assert_array_equal(index.window_starts(K), naive_starts)


def test_average_returns_to_go_by_hand():
    """MTM's return token: the rewards from t on (r_t included) over the true steps left, L - t."""
    index = EpisodeIndex.from_done(np.array([0, 0, 1, 0, 1], bool))  # episodes of lengths 3 and 2
    rewards = np.array([1.0, 2.0, 3.0, 4.0, 6.0], np.float32)
    avg = index.average_returns_to_go(rewards)
    assert avg.dtype == np.float32
    np.testing.assert_allclose(avg, [6 / 3, 5 / 2, 3 / 1, 10 / 2, 6 / 1])


def test_average_rtg_in_windows(two_files):
    files, _ = two_files
    ds = EpisodeWindowDataset(files, K)
    batch = ds.__getitems__(np.arange(len(ds)))
    steps_left = np.concatenate([np.repeat(f.index.lengths, f.index.lengths) - f.index.timesteps() for f in files])
    steps = ds.starts[:, None] + np.arange(K)  # (W, K)
    assert batch["rtg_avg"].dtype == torch.float32 and batch["rtg_avg"].shape == batch["rtg"].shape
    np.testing.assert_allclose(batch["rtg_avg"] * steps_left[steps], batch["rtg"], rtol=1e-5)


def test_rtg_in_windows_counts_down_by_reward(two_files):
    files, _ = two_files
    batch = EpisodeWindowDataset(files, K).__getitems__(np.arange(10))
    np.testing.assert_allclose(batch["rtg"][:, :-1] - batch["rtg"][:, 1:], batch["rewards"][:, :-1], atol=1e-4)


def test_episode_selection_and_num_steps(two_files, tmp_path):
    files, _ = two_files
    ds = EpisodeWindowDataset(files[:1], K, episodes=[np.array([3])])  # the 12-step episode only
    assert len(ds) == 12 - K + 1
    assert torch.all(ds.__getitems__(np.arange(len(ds)))["observations"] == 3)
    first_two = TrajectoryFile(str(tmp_path / "a.h5"), max_steps=12)  # episodes end at 7, 10, 15, 27
    assert first_two.num_steps == 10 and first_two.index.num_episodes == 2
    with pytest.raises(DatasetError, match="shorter than the first episode"):
        TrajectoryFile(str(tmp_path / "a.h5"), max_steps=5)


def test_no_complete_window_is_a_clear_error(tmp_path):
    write_synthetic(tmp_path / "short.h5", [3, 4])
    with pytest.raises(DatasetError, match="no complete window of 5 steps.*short.h5"):
        EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "short.h5"))], K)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])
def test_pixel_windows_match_the_file(tmp_path, cache_bytes):
    episodes = write_synthetic(tmp_path / "p.h5", [40, 45], pixels=True)
    frames = np.concatenate([ep["pixels"] for ep in episodes])
    ds = EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "p.h5"), load_pixels=True)], K, pixels=True,
                              pixel_cache_bytes=cache_bytes)
    assert (ds.files[0].pixels._ram is not None) == (cache_bytes > 0)
    idx = np.array([0, 17, len(ds) - 1])
    batch = ds.__getitems__(idx)
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (3, K, 3, 84, 84)
    for b, s in enumerate(ds.starts[idx]):
        np.testing.assert_array_equal(batch["pixels"][b].numpy(), frames[s : s + K])


def test_pixel_windows_are_read_at_the_raw_chunk_offsets_and_equal_the_file(tmp_path):
    # 85 frames = 2 full 32-frame chunks + a partial one: windows cross chunk boundaries and end in the last chunk.
    episodes = write_synthetic(tmp_path / "p.h5", [40, 45], pixels=True)
    frames = np.concatenate([ep["pixels"] for ep in episodes])
    reader = TrajectoryFile(str(tmp_path / "p.h5"), load_pixels=True).pixels
    out = np.empty((K, 3, 84, 84), np.uint8)
    reader.read_into(out, 0)
    assert reader._chunks is not None  # the raw-offset path, not h5py
    for start in range(len(frames) - K + 1):
        reader.read_into(out, start)
        np.testing.assert_array_equal(out, frames[start : start + K])
    assert pickle.loads(pickle.dumps(reader))._chunks is None  # reopened in the receiving process


def test_compressed_pixel_files_are_read_through_h5py(tmp_path):
    episodes = write_synthetic(tmp_path / "p.h5", [40], pixels=True)
    with h5py.File(tmp_path / "p.h5", "a") as h5:  # the same file with gzip frames
        data = h5["pixels"][:]
        del h5["pixels"]
        h5.create_dataset("pixels", data=data, chunks=(32, 3, 84, 84), compression="gzip")
    reader = TrajectoryFile(str(tmp_path / "p.h5"), load_pixels=True).pixels
    out = np.empty((K, 3, 84, 84), np.uint8)
    reader.read_into(out, 5)
    assert reader._chunks is None
    np.testing.assert_array_equal(out, episodes[0]["pixels"][5 : 5 + K])


def test_pixels_requested_from_a_state_file_is_a_clear_error(tmp_path):
    write_synthetic(tmp_path / "s.h5", [10])
    with pytest.raises(DatasetError, match="no 'pixels' key"):
        TrajectoryFile(str(tmp_path / "s.h5"), load_pixels=True)


def test_dataloader_workers_deliver_the_same_windows(tmp_path):
    write_synthetic(tmp_path / "p.h5", [40, 45], pixels=True)
    ds = EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "p.h5"), load_pixels=True)], K, pixels=True)
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=passthrough_collate)
    seen = torch.cat([b["pixels"] for b in loader])
    np.testing.assert_array_equal(seen.numpy(), ds.__getitems__(np.arange(len(ds)))["pixels"].numpy())


def test_real_collected_files(collected_dir):
    files = [TrajectoryFile(str(p)) for p in sorted(collected_dir.glob("*/*.h5"))]
    ds = EpisodeWindowDataset(files, 30)
    assert len(ds) == len(files) * 4 * (250 - 30 + 1)
    item = ds[0]
    assert item["observations"].shape == (30, 5 + 3) and item["actions"].shape == (30, 2)
    assert item["timesteps"].tolist() == list(range(30))
