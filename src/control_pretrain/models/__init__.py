"""The control transformer and its encoders."""
