"""dm_control environment factory."""
