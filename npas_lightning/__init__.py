"""npas-lightning: compiler-aware network pruning and architecture search for PyTorch Lightning.

Example:
    >>> from npas_lightning import load_pruned
    >>> model = load_pruned("logs/prune/runs/<date>/pruned.ckpt")   # doctest: +SKIP
"""

from npas_lightning.checkpoint import load_plan, load_pruned, save_pruned

__version__ = "0.1.0"

__all__ = ["__version__", "load_plan", "load_pruned", "save_pruned"]
