"""Recipes built on runs: fine-tuning on labels, experiments over seeds."""
