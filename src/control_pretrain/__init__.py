"""Self-supervised multi-task pretraining of control transformers on dm_control, and finetuning them."""

__version__ = "0.1.0"
