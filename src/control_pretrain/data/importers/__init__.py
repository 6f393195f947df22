"""Converters between other dataset layouts and ours: SMART release buffers, D4RL-layout HDF5, ExORL episodes
(import), Minari (export and import); target.py holds the checks they share."""
