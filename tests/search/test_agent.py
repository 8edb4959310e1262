"""Q-learning agent: determinism, equation (1), update arithmetic, replay, state round trip."""

import numpy as np
import pytest

from npas_lightning.search.agent import QLearningAgent, reward_eq1
from npas_lightning.search.epsilon import get_epsilon_schedule, list_epsilon_schedules
from npas_lightning.search.space import Choice, LayerSpace, SearchSpace


def _space(n_layers: int = 4, n_choices: int = 3) -> SearchSpace:
    choices = tuple(Choice("keep", "filter", float(r), None) for r in (2.0, 3.0, 5.0, 7.0, 10.0)[:n_choices - 1])
    choices = (Choice("keep", "unstructured", 1.0, None),) + choices
    return SearchSpace([LayerSpace(f"l{i}", "conv", choices) for i in range(n_layers)])


def test_reward_equation_1():
    assert reward_eq1(0.9, 8.0, 10.0, 0.05) == pytest.approx(0.9)  # meets H: no penalty
    assert reward_eq1(0.9, 12.0, 10.0, 0.05) == pytest.approx(0.9 - 0.05 * 2.0)
    assert reward_eq1(0.5, 30.0, 10.0, 0.0) == pytest.approx(0.5)


def test_update_follows_shaped_rewards_by_hand():
    sp = _space(n_layers=2, n_choices=2)
    ag = QLearningAgent(sp, learning_rate=0.5, discount=1.0, q_init=0.0, replay_batch=0)
    ag.update((1, 0), 0.8)
    # last transition: r_T = 0.8, no successor -> Q1[1, 0] = 0.5 * 0.8
    assert ag.q[1][1, 0] == pytest.approx(0.4)
    # first transition: r_t = r_T / T = 0.4, plus max Q1[1, :] = 0.4 -> 0.5 * (0.4 + 0.4)
    assert ag.q[0][0, 1] == pytest.approx(0.4)
    assert ag.q[0][0, 0] == 0.0 and ag.q[1][0, 0] == 0.0


def test_epsilon_zero_with_fixed_q_is_deterministic():
    sp = _space(n_layers=5, n_choices=3)
    rng = np.random.default_rng(123)
    q = [rng.random((1 if d == 0 else 3, 3)) for d in range(5)]
    trajs = []
    for seed in (0, 1, 2):
        ag = QLearningAgent(sp, seed=seed)
        ag.q = [a.copy() for a in q]
        trajs += [ag.generate(episode=10**6, epsilon=0.0) for _ in range(3)]
    assert len(set(trajs)) == 1
    expect, prev = [], 0
    for d in range(5):
        prev = int(np.argmax(q[d][prev]))
        expect.append(prev)
    assert trajs[0] == tuple(expect)


def test_same_seed_same_trajectories_and_replay():
    sp = _space()
    runs = []
    for _ in range(2):
        ag = QLearningAgent(sp, seed=7, replay_batch=5, epsilon={"name": "linear", "start": 1, "end": 0.1,
                                                                  "episodes": 10})
        out = []
        for ep in range(12):
            t = ag.generate(ep)
            ag.observe(t, float(sum(t)) / 10)
            ag.replay_step()
            out.append(t)
        runs.append((out, [a.copy() for a in ag.q]))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_state_dict_round_trip_continues_identically():
    sp = _space()
    a = QLearningAgent(sp, seed=3, replay_batch=4)
    for ep in range(5):
        t = a.generate(ep)
        a.observe(t, 0.1 * ep)
        a.replay_step()
    b = QLearningAgent(sp, seed=99, replay_batch=4)
    b.load_state_dict(a.state_dict())
    for ep in range(5, 9):
        ta, tb = a.generate(ep), b.generate(ep)
        assert ta == tb
        a.observe(ta, 0.3)
        b.observe(tb, 0.3)
        a.replay_step()
        b.replay_step()
    assert all(np.array_equal(x, y) for x, y in zip(a.q, b.q, strict=True))


def test_load_state_dict_refuses_other_space():
    a = QLearningAgent(_space(n_layers=3))
    b = QLearningAgent(_space(n_layers=4))
    with pytest.raises(ValueError, match="Q table shapes"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"learning_rate": 0.0}, "learning_rate=0.0"), ({"discount": 1.5}, "discount=1.5"),
     ({"replay_batch": -1}, "replay_batch=-1"), ({"replay_size": 0}, "replay_size=0"),
     ({"epsilon": {"name": "cosine"}}, "epsilon.name='cosine'"),
     ({"epsilon": {"name": "constant", "value": 2.0}}, "outside")],
)
def test_bad_agent_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QLearningAgent(_space(), **kwargs)


def test_epsilon_schedules():
    assert set(list_epsilon_schedules()) >= {"constant", "linear", "piecewise"}
    lin = get_epsilon_schedule("linear", start=1.0, end=0.1, episodes=100)
    assert [lin(0), lin(50), lin(100), lin(1000)] == [1.0, 0.55, 0.1, 0.1]
    pw = get_epsilon_schedule("piecewise", values=[1.0, 0.5], counts=[2, 2])
    assert [pw(0), pw(1), pw(2), pw(3), pw(9)] == [1.0, 1.0, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="bad parameters"):
        get_epsilon_schedule("linear", stop=3)
