"""npas-lightning: compiler-aware network pruning and architecture search for PyTorch Lightning."""

__version__ = "0.1.0"
