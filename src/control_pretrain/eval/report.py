"""The final report of a finetuning run: ``trainer.test`` on the last and on the best checkpoint (Lightning loads
each one; the ``RolloutEvaluation`` callback runs the held-out test seeds), written to
``{output_dir}/eval_results.json`` (DESIGN.md "Outputs of a run") atomically by rank 0. The top level describes
the **last** checkpoint, which involves no selection; ``best`` holds the checkpoint picked by ``eval/return_mean``
on the selection seeds (CORL-style: report both)."""

from __future__ import annotations

import json
import logging
import os

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from .callback import RolloutEvaluation
from .stats import summarize

log = logging.getLogger(__name__)


def evaluation_callback(trainer: Trainer) -> RolloutEvaluation:
    found = [cb for cb in trainer.callbacks if isinstance(cb, RolloutEvaluation)]
    if not found:
        raise RuntimeError("the trainer has no RolloutEvaluation callback (the module's configure_callbacks adds it)")
    return found[0]


def report_entry(trainer: Trainer, module: LightningModule, datamodule: LightningDataModule,
                    checkpoint: str | None) -> dict:
    """The report entry of one checkpoint (None: the module's current weights) on the test seeds."""
    trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    res = evaluation_callback(trainer).test_results
    return {"checkpoint": checkpoint, "seeds": res.seeds, **summarize(res.returns),
            "steps_per_sec": res.steps_per_sec}


def final_report(trainer: Trainer, module: LightningModule, datamodule: LightningDataModule,
                 output_dir: str) -> dict:
    hp = module.hparams
    ckpt_cb = trainer.checkpoint_callback
    last_path = (ckpt_cb.last_model_path if ckpt_cb is not None else "") or None
    last = report_entry(trainer, module, datamodule, last_path)
    if hp.video and trainer.is_global_zero:
        write_video(trainer, module, os.path.join(output_dir, "videos", "eval_episode0.mp4"))
    report = {"domain": hp.domain, "task": hp.task, "model_type": hp.get("model_type", hp.get("mode")),
              "pretrained_from": hp.load_model_from, "target_return": module.target_return, **last,
              "selection_seeds": module.selection_seeds(), "data": datamodule.selection_summary()}
    best_path = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best_path and os.path.exists(best_path):
        report["best"] = report_entry(trainer, module, datamodule, best_path)
        report["best"]["selection_score"] = float(ckpt_cb.best_model_score)
    if "mode" in hp:
        report["mode"] = hp.mode
    if getattr(module, "rtg_target", None) is not None:  # MTM's rcbc: the constant average return token
        report["target_rtg_avg"] = module.rtg_target
    if trainer.is_global_zero:
        write_json_atomically(report, os.path.join(output_dir, "eval_results.json"))
    return report


def write_json_atomically(obj: dict, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def write_video(trainer: Trainer, module: LightningModule, path: str) -> None:
    """An mp4 of the first test episode, run on this rank alone (no gathering)."""
    import imageio

    cb = evaluation_callback(trainer)
    res = cb.rollouts(trainer, module, cb.test_seeds[:1], record_video=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    imageio.mimwrite(path, res.frames.transpose(0, 2, 3, 1), fps=30, macro_block_size=4)
    log.info("video of one evaluation episode written to %s", path)


def offline_report(trainer: Trainer, module: LightningModule, datamodule: LightningDataModule,
                   output_dir: str) -> dict:
    """The offline modes' report (id, fd, probes; DESIGN.md): the mode's MSEs with the module's current weights
    (the checkpoint as loaded, or finetuned) on every window of the held-out replay's episodes."""
    hp = module.hparams
    datamodule.setup("validate")
    report = {"mode": hp.mode, "domain": hp.domain, "task": hp.task, "checkpoint": hp.load_model_from,
              "finetune_steps": trainer.global_step, "metrics": module.probe_metrics(datamodule.val_dataloader()),
              "episodes": [int(e) for e in datamodule.val_episodes], "replay": datamodule.val_path, "seeds": []}
    if trainer.is_global_zero:
        write_json_atomically(report, os.path.join(output_dir, "eval_results.json"))
    return report
