"""Converters from other dataset layouts into ours (SMART release buffers; ExORL, D4RL and Minari later)."""
