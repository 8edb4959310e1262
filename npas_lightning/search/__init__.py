"""Phase-2 NPAS scheme search (paper section 5.2): space, Q-learning agent, GP+WL predictor, evaluator,
executors (local / Ray), crash-safe state and reports.

Example::

    >>> from npas_lightning.search import NPASSearch, SearchSpace, SpaceConfig, FastEvaluator
    >>> space = SearchSpace.from_model(net, torch.randn(1, 3, 32, 32), SpaceConfig(rates=[1, 2, 5]))
    >>> ev = FastEvaluator(net, dm.train_dataloader, dm.val_dataloader, torch.randn(1, 3, 32, 32))
    >>> result = NPASSearch(space, ev, latency_budget_ms=3.0, run_dir="runs/s").run()
    >>> result.best["plan"], result.feasible
"""

from npas_lightning.search.agent import QLearningAgent, reward_eq1
from npas_lightning.search.epsilon import (
    get_epsilon_schedule,
    list_epsilon_schedules,
    register_epsilon_schedule,
)
from npas_lightning.search.evaluator import FastEvaluator
from npas_lightning.search.executors import LocalExecutor, RayExecutor, build_executor
from npas_lightning.search.predictor import (
    GPPredictor,
    WLFeaturizer,
    WLKernel,
    expected_improvement,
    wl_kernel_matrix,
)
from npas_lightning.search.result import EvalResult, Evaluator, safe_evaluate
from npas_lightning.search.search import STRATEGIES, NPASSearch, SearchResult
from npas_lightning.search.space import Choice, LayerSpace, SearchSpace, SpaceConfig, SpaceError
from npas_lightning.search.state import StateError, load_state, model_fingerprint, save_state

__all__ = [
    "STRATEGIES",
    "Choice",
    "EvalResult",
    "Evaluator",
    "FastEvaluator",
    "GPPredictor",
    "LayerSpace",
    "LocalExecutor",
    "NPASSearch",
    "QLearningAgent",
    "RayExecutor",
    "SearchResult",
    "SearchSpace",
    "SpaceConfig",
    "SpaceError",
    "StateError",
    "WLFeaturizer",
    "WLKernel",
    "build_executor",
    "expected_improvement",
    "get_epsilon_schedule",
    "list_epsilon_schedules",
    "load_state",
    "model_fingerprint",
    "register_epsilon_schedule",
    "reward_eq1",
    "safe_evaluate",
    "save_state",
    "wl_kernel_matrix",
]
