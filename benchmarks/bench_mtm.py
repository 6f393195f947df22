"""MTM training throughput (issue 14), run by hand:

    python benchmarks/bench_mtm.py [--out docs/benchmarks.md] [--device cuda]

A training step = one mask draw (random-autoregressive, per sample) + the masked trajectory model's forward over
(obs, rtg, act) tokens + the reconstruction loss + backward + AdamW step, train mode, random tensors shaped like
the DataModule's batches (state: obs 24, action 6; pixels: uint8 3x84x84). One subprocess per configuration (its
own peak RSS); samples/s is the median over 3 timed repetitions after a warm-up step. Sizes: ``cpu`` is the
preset configs/methods/mtm.yaml (128 wide, 2 + 1 layers, K=8, batch 256); ``paper`` is MTM's D4RL model
(512 wide, 2 + 1 layers, K=4, batch 2048; on the CPU a few steps only); ``mae_split`` on and off at the CPU size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _report import cpu_model, markdown_table, publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## MTM training (issue 14)"
OBS_DIM, ACTION_DIM = 24, 6
CONFIGS = {  # name -> (n_embd, n_head, K, batch, mae_split, steps per repetition)
    "cpu": (128, 4, 8, 256, True, 5),
    "cpu, mae_split false": (128, 4, 8, 256, False, 5),
    "paper": (512, 8, 4, 2048, True, 2),
}
PIXEL_BATCH = 32  # pixels: the CNN dominates; batch 32 at both sizes


def one(name: str, obs_type: str, device: str) -> dict:
    """Time one configuration in this process."""
    import torch

    sys.path.insert(0, os.path.join(ROOT, "src"))
    from control_pretrain.lit.mtm_module import MTMPretrainModule

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    C, nh, K, B, mae, steps = CONFIGS[name]
    if obs_type == "pixels":
        B, steps = PIXEL_BATCH, 2
    module = MTMPretrainModule(obs_type=obs_type, obs_dim=OBS_DIM, action_dim=ACTION_DIM, n_embd=C, n_head=nh,
                               n_enc_layer=2, n_dec_layer=1, context_length=K, mae_split=mae).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"actions": torch.rand(B, K, ACTION_DIM) * 2 - 1, "rtg_avg": torch.rand(B, K),
             "timesteps": torch.arange(K).expand(B, K), "action_mask": torch.ones(B, ACTION_DIM),
             "has_action": torch.ones(B, dtype=torch.bool)}
    if obs_type == "pixels":
        batch["pixels"] = torch.randint(0, 256, (B, K, 3, 84, 84), dtype=torch.uint8)
    else:
        batch["observations"] = torch.randn(B, K, OBS_DIM)
    batch = {k: v.to(device) for k, v in batch.items()}

    def step() -> None:
        loss = module.compute_losses(batch, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        module.mtm.after_optimizer_step(module.model)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    sync()
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(B * steps / (time.perf_counter() - start))
    return {"samples_per_sec": statistics.median(rates), "params_m": module.model.num_params() / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "batch": B, "K": K}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the section into this markdown file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # name obs_type: run one configuration
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.device)))
        return
    load, threads = os.getloadavg()[0], os.environ.get("BENCH_THREADS", "2")
    rows = []
    for obs_type in ("state", "pixels"):
        for name in CONFIGS:
            if obs_type == "pixels" and "mae_split" in name:
                continue
            out = subprocess.run([sys.executable, __file__, "--one", name, obs_type, "--device", args.device],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append([obs_type, name, f"{r['params_m']:.2f}M", r["K"], r["batch"], f"{r['samples_per_sec']:,.0f}",
                         f"{r['peak_rss_mb']:,.0f}"])
            print(rows[-1], flush=True)
    text = "\n".join([
        SECTION, "",
        f"- Date: {datetime.date.today()}",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}; device {args.device}; torch threads {threads}",
        f"- Command: `BENCH_THREADS={threads} python benchmarks/bench_mtm.py --out docs/benchmarks.md`",
        f"- 1-min load average at start / end: {load:.2f} / {os.getloadavg()[0]:.2f}", "",
        markdown_table(["obs", "size", "params", "K", "batch", "samples/s", "peak RSS MB"], rows), "",
        "A sample is one K-step window (3K tokens). Training step: mask draw + forward + loss + backward + AdamW.", ""])
    publish(text, args.out, SECTION)


if __name__ == "__main__":
    main()
