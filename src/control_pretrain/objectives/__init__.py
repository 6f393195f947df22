"""One class per training objective (SMART pretraining objectives, BC and return-conditioned control)."""
