"""LightningDataModules: multi-task pretraining windows and single-task finetuning windows."""
