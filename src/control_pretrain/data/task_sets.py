"""Task sets: which (domain, task) pairs a multi-task run uses, as JSON files in SMART's format
(configs/pretrain_configs/: ``{"walker": ["stand", "run"], ...}``)."""

from __future__ import annotations

import json

from ..errors import DatasetError


def load_task_set(path: str) -> dict[str, list[str]]:
    """A task-set JSON as in SMART's configs/pretrain_configs: ``{"walker": ["stand", "run"], ...}``."""
    try:
        with open(path) as f:
            tasks = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such task-set file (see configs/pretrain_configs/).") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(tasks, dict) or not all(isinstance(v, list) and v for v in tasks.values()):
        raise DatasetError(f'{path}: expected {{"domain": ["task", ...], ...}}, found {tasks!r}.')
    return tasks
