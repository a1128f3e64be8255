"""Ratings from pairwise games, for the round robin and Swiss tournaments (`rrm_ray.judge.tournament`):
sequential Elo averaged over seeded game orders, and a penalised Bradley-Terry fit by damped Newton.
A game is (i, j, s): items i and j, s the score of i (1 win, 0 loss, 0.5 undecided)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

_TIE_TOL = 1e-6  # rating differences below this are float noise, not a preference


_BT_PRIOR = 1.0  # virtual wins (and losses) of every item against the reference


_BT_TOL = 1e-10  # gradient size at which the Newton fit stops (in games)


_BT_MAX_ITER = 100


def rank_by(ratings: Sequence[float]) -> list[int]:
    """Indexes sorted by rating, best first; near-equal ratings (within 1e-6) keep index order."""
    order = sorted(range(len(ratings)), key=lambda i: -ratings[i])
    # Stable insertion pass: inside a run of near-ties, restore index order.
    out: list[int] = []
    for i in order:
        k = len(out)
        while k > 0 and out[k - 1] > i and abs(ratings[out[k - 1]] - ratings[i]) < _TIE_TOL:
            k -= 1
        out.insert(k, i)
    return out


def elo_ratings(
    n: int, games: list[tuple[int, int, float]], k_factor: float, initial: float, shuffles: int, seed: int
) -> list[float]:
    """Sequential Elo of `n` items over `games` (i, j, score of i), averaged over `shuffles` seeded
    orders of the games, each from `initial`."""
    rng = random.Random(seed)
    total = [0.0] * n
    for _ in range(shuffles):
        order = games[:]
        rng.shuffle(order)
        r = [initial] * n
        for i, j, s in order:
            expected = 1.0 / (1.0 + 10.0 ** ((r[j] - r[i]) / 400.0))
            delta = k_factor * (s - expected)
            r[i] += delta
            r[j] -= delta
        total = [acc + x for acc, x in zip(total, r, strict=True)]
    return [x / shuffles for x in total]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _bt_objective(theta: list[float], games: list[tuple[int, int, float]]) -> float:
    """Penalised log-likelihood: the games plus the prior's virtual games against theta = 0.

    Per game s*log sig(d) + (1-s)*log sig(-d) with d = theta_i - theta_j, written as
    log sig(-d) + s*d (log sig(d) - log sig(-d) = d): one log-sigmoid per game instead of two, which
    halves the cost of the fit (the simulation in rrm_ray.judge.simulation runs it thousands of times).
    """
    ll = sum(_log_sigmoid(theta[j] - theta[i]) + s * (theta[i] - theta[j]) for i, j, s in games)
    return ll + _BT_PRIOR * sum(2.0 * _log_sigmoid(x) - x for x in theta)


def _solve_spd(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve a x = b for a symmetric positive definite a (Cholesky; n is a group size, so tiny)."""
    n = len(b)
    low = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            acc = a[i][j] - sum(low[i][k] * low[j][k] for k in range(j))
            low[i][j] = math.sqrt(acc) if i == j else acc / low[j][j]
    y = [0.0] * n
    for i in range(n):
        y[i] = (b[i] - sum(low[i][k] * y[k] for k in range(i))) / low[i][i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum(low[k][i] * x[k] for k in range(i + 1, n))) / low[i][i]
    return x


def bradley_terry_ratings(n: int, games: list[tuple[int, int, float]], initial: float) -> list[float]:
    """Penalised Bradley-Terry MLE of `n` items over `games` in log-strengths theta (p = e^theta), on
    the Elo scale with mean `initial`.

    Damped Newton: the objective is strictly concave (the prior adds curvature to every item), so
    Newton with step halving converges from theta = 0, to machine precision, in about ten steps.
    """
    theta = [0.0] * n
    value = _bt_objective(theta, games)
    for _ in range(_BT_MAX_ITER):
        # grad_i = wins_i + prior - sum over i's games of P(i wins) - 2 prior P(i beats reference);
        # neg_hess = the (positive definite) negative Hessian, a weighted graph Laplacian + prior.
        grad = [_BT_PRIOR - 2.0 * _BT_PRIOR * _sigmoid(x) for x in theta]
        neg_hess = [[0.0] * n for _ in range(n)]
        for i, x in enumerate(theta):
            q = _sigmoid(x)
            neg_hess[i][i] = 2.0 * _BT_PRIOR * q * (1.0 - q)
        for i, j, s in games:
            q = _sigmoid(theta[i] - theta[j])
            grad[i] += s - q
            grad[j] += (1.0 - s) - (1.0 - q)
            v = q * (1.0 - q)
            neg_hess[i][i] += v
            neg_hess[j][j] += v
            neg_hess[i][j] -= v
            neg_hess[j][i] -= v
        if max(abs(g) for g in grad) < _BT_TOL:
            break
        step = _solve_spd(neg_hess, grad)
        if max(abs(d) for d in step) < _BT_TOL:
            break
        scale = 1.0
        while True:
            cand = [x + scale * d for x, d in zip(theta, step, strict=True)]
            cand_value = _bt_objective(cand, games)
            if cand_value >= value or scale < 1e-6:
                break
            scale /= 2.0
        theta, value = cand, cand_value
    elo = [400.0 * x / math.log(10.0) for x in theta]
    mean = sum(elo) / n
    return [initial + x - mean for x in elo]
