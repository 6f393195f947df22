"""Producers of dataset files: random actions, a learning SAC agent, a saved agent (``dmc_data.py collect``)."""
