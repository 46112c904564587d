"""Offline training: the papers' recipes, two-stage training, resumable checkpoints, DDP."""
