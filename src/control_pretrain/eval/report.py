"""The final report of a finetuning run: evaluate the last and the best checkpoint on held-out test seeds and
write ``{output_dir}/eval_results.json`` (DESIGN.md). The top level describes the **last** checkpoint, which
involves no selection; ``best`` holds the checkpoint picked by ``eval/return_mean`` on the selection seeds
(CORL-style: report both)."""

from __future__ import annotations

import json
import logging
import os

import torch

from .stats import summarize

log = logging.getLogger(__name__)


def _entry(module, checkpoint: str | None) -> dict:
    res = module.rollouts(module.test_seeds())
    return {"checkpoint": checkpoint, "seeds": res.seeds, **summarize(res.returns),
            "steps_per_sec": res.steps_per_sec}


def final_report(module, trainer, output_dir: str) -> dict:
    hp = module.hparams
    ckpt_cb = trainer.checkpoint_callback
    last_path = ckpt_cb.last_model_path if ckpt_cb is not None else None
    last = _entry(module, last_path or None)
    if hp.video and trainer.is_global_zero:
        write_video(module, os.path.join(output_dir, "videos", "eval_episode0.mp4"))
    report = {"domain": hp.domain, "task": hp.task, "model_type": hp.model_type,
              "pretrained_from": hp.load_model_from, "target_return": module.target_return, **last,
              "selection_seeds": module.selection_seeds(), "data": trainer.datamodule.selection_summary()}
    best_path = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best_path and os.path.exists(best_path):
        module.load_state_dict(torch.load(best_path, map_location=module.device, weights_only=False)["state_dict"])
        report["best"] = _entry(module, best_path)
        report["best"]["selection_score"] = float(ckpt_cb.best_model_score)
    path = os.path.join(output_dir, "eval_results.json")
    if trainer.is_global_zero:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, path)
    return report


def write_video(module, path: str) -> None:
    import imageio

    res = module.rollouts(module.test_seeds()[:1], record_video=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    imageio.mimwrite(path, res.frames.transpose(0, 2, 3, 1), fps=30, macro_block_size=4)
    log.info("video of one evaluation episode written to %s", path)
