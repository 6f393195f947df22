"""Policy rollouts in dm_control and their statistics."""
