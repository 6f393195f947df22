"""Online RL agents: sac.py (the agent), replay.py (its replay buffer), loop.py (the online loop every agent runs
in), registry.py (``--agent NAME``), online_run.py (``dmc_online.py``'s run folder), metric_log.py, tensors.py."""
