"""Tabular Q-learning agent over the NPAS state DAG (paper section 5.2.2).

States are (layer depth i, choice) where a choice is (filter type, scheme, rate, block); an action
from depth i is a choice of layer i+1, so the state-action graph is a DAG that ends at the last
layer. ``Q[d]`` has shape ``(n_{d-1}, n_d)`` (``Q[0]`` has one row: the start state).

Rewards follow equation (1): ``r_T = V - alpha * max(0, h - H)`` for the final transition and the
shaped ``r_t = r_T / T`` for every intermediate one. Updates walk the trajectory backwards::

    Q[s, a] <- (1 - lr) * Q[s, a] + lr * (r + discount * max_a' Q[a, a'])      (0 after the last layer)

Experience replay: every observed (trajectory, r_T) enters the buffer; after each search step
``replay_batch`` entries are drawn (with replacement, seeded) and replayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from npas_lightning.search.epsilon import EpsilonSchedule, get_epsilon_schedule
from npas_lightning.search.space import SearchSpace

__all__ = ["QLearningAgent", "reward_eq1"]


def reward_eq1(V: float, h: float, H: float, alpha: float) -> float:
    """Equation (1): ``r_T = V - alpha * max(0, h - H)``.

    >>> reward_eq1(0.9, 12.0, 10.0, 0.05)
    0.8
    """
    return float(V - alpha * max(0.0, h - H))


class QLearningAgent:
    """Epsilon-greedy tabular Q-learning with reward shaping and experience replay.

    Args:
        space: the search space (defines the DAG).
        learning_rate: Q-learning step size in (0, 1].
        discount: discount factor in [0, 1].
        epsilon: ``{"name": <registered schedule>, **params}`` or an :class:`EpsilonSchedule`.
        replay_batch: replayed trajectories per step (0 disables replay).
        replay_size: buffer capacity (``None`` = unbounded).
        q_init: initial Q value.
        seed: seed of the agent's numpy Generator.
    """

    def __init__(self, space: SearchSpace, *, learning_rate: float = 0.1, discount: float = 1.0,
                 epsilon: dict[str, Any] | EpsilonSchedule | None = None, replay_batch: int = 32,
                 replay_size: int | None = None, q_init: float = 0.5, seed: int = 0) -> None:
        if not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"search.agent.learning_rate={learning_rate}: must be in (0, 1]")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"search.agent.discount={discount}: must be in [0, 1]")
        if replay_batch < 0:
            raise ValueError(f"search.agent.replay_batch={replay_batch}: must be >= 0")
        if replay_size is not None and replay_size < 1:
            raise ValueError(f"search.agent.replay_size={replay_size}: must be >= 1 or null")
        self.space = space
        self.learning_rate = float(learning_rate)
        self.discount = float(discount)
        if epsilon is None:
            epsilon = {"name": "linear", "start": 1.0, "end": 0.1, "episodes": 100}
        if isinstance(epsilon, EpsilonSchedule):
            self.epsilon_schedule = epsilon
        else:
            params = dict(epsilon)
            self.epsilon_schedule = get_epsilon_schedule(params.pop("name", "linear"), **params)
        self.replay_batch = int(replay_batch)
        self.replay_size = replay_size
        self.q_init = float(q_init)
        self.rng = np.random.default_rng(seed)
        sizes = space.sizes
        self.q: list[np.ndarray] = [np.full((1 if d == 0 else sizes[d - 1], sizes[d]), self.q_init)
                                    for d in range(len(sizes))]
        self.replay: list[tuple[tuple[int, ...], float]] = []

    # ------------------------------------------------------------------ acting
    def epsilon(self, episode: int) -> float:
        return float(self.epsilon_schedule(episode))

    def _greedy(self, row: np.ndarray) -> int:
        best = np.flatnonzero(row == row.max())
        return int(best[0]) if len(best) == 1 else int(self.rng.choice(best))

    def generate(self, episode: int, epsilon: float | None = None) -> tuple[int, ...]:
        """One trajectory (a choice index per layer), epsilon-greedy at ``episode``'s epsilon."""
        eps = self.epsilon(episode) if epsilon is None else float(epsilon)
        traj: list[int] = []
        prev = 0
        for d in range(len(self.q)):
            row = self.q[d][prev]
            a = int(self.rng.integers(len(row))) if self.rng.random() < eps else self._greedy(row)
            traj.append(a)
            prev = a
        return tuple(traj)

    def greedy(self) -> tuple[int, ...]:
        """The current greedy trajectory (epsilon 0)."""
        return self.generate(0, epsilon=0.0)

    # ------------------------------------------------------------------ learning
    def update(self, trajectory: Sequence[int], reward: float) -> None:
        """One backward Q-learning pass over ``trajectory`` with final reward ``reward`` (eq. 1)."""
        traj = self.space.validate(trajectory)
        T = len(traj)
        lr, g = self.learning_rate, self.discount
        for d in range(T - 1, -1, -1):
            prev = 0 if d == 0 else traj[d - 1]
            a = traj[d]
            r = reward if d == T - 1 else reward / T
            nxt = g * float(self.q[d + 1][a].max()) if d < T - 1 else 0.0
            self.q[d][prev, a] = (1.0 - lr) * self.q[d][prev, a] + lr * (r + nxt)

    def observe(self, trajectory: Sequence[int], reward: float) -> None:
        """Add an evaluated trajectory to the replay buffer and learn from it."""
        traj = self.space.validate(trajectory)
        self.replay.append((traj, float(reward)))
        if self.replay_size is not None and len(self.replay) > self.replay_size:
            del self.replay[: len(self.replay) - self.replay_size]
        self.update(traj, reward)

    def replay_step(self) -> int:
        """Replay ``replay_batch`` buffered trajectories (seeded draw with replacement)."""
        if not self.replay or self.replay_batch == 0:
            return 0
        idx = self.rng.integers(len(self.replay), size=self.replay_batch)
        for i in idx:
            traj, r = self.replay[int(i)]
            self.update(traj, r)
        return len(idx)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "q": [q.tolist() for q in self.q],
            "replay": [[list(t), r] for t, r in self.replay],
            "rng": self.rng.bit_generator.state,
            "learning_rate": self.learning_rate,
            "discount": self.discount,
            "q_init": self.q_init,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = [np.asarray(x, dtype=np.float64) for x in state["q"]]
        shapes = [a.shape for a in self.q]
        if [a.shape for a in q] != shapes:
            raise ValueError(
                f"QLearningAgent.load_state_dict: Q table shapes {[a.shape for a in q]} do not match "
                f"this space's {shapes}"
            )
        self.q = q
        self.replay = [(self.space.validate(t), float(r)) for t, r in state["replay"]]
        self.rng.bit_generator.state = state["rng"]
