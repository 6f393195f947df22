"""Argument handling for the entry scripts in src/: the dataset CLI and the LightningCLI of training."""
