"""MWM (Masked World Models, Seo et al. 2022): agent.py (the online agent), config.py, presets.py, rssm.py,
world_model.py, behavior.py; mlr_mwm.md Part B."""
