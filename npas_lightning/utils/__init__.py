"""Helpers shared by recipes and the entry point: building parts from config, W&B, summaries."""
