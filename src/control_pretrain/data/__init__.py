"""Dataset format, readers, writers, collectors and DataModules."""
