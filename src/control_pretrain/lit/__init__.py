"""LightningModules and callbacks."""
