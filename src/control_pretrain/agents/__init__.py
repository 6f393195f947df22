"""Online RL agents (SAC for data collection)."""
