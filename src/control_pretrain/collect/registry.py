"""The one registry of dataset producers: ``--policy NAME`` -> a function ``(job, progress) -> path``."""

from __future__ import annotations

from .checkpoint import collect_checkpoint
from .random import collect_random
from .sac import collect_sac

COLLECTORS = {"random": collect_random, "sac": collect_sac, "checkpoint": collect_checkpoint}
