"""Pair statistics of per-sample x per-task gradients, from Gram matrices.

Definitions (Elich et al. 2024, "Gradient conflicts"; ``shared/spec/elich2024.md``), for two
gradients ``g, g'`` of the shared parameters (``D`` coordinates):

* cosine similarity ``<g, g'> / (|g| |g'|)``; the pair *conflicts* when it is negative;
* magnitude similarity ``2 |g| |g'| / (|g|^2 + |g'|^2)`` (1 for equal norms, towards 0 as they
  drift apart);
* ratio of conflicting parameters: the paper gives no formula; here it is the fraction of the
  ``D`` coordinates on which ``g`` and ``g'`` have strictly opposite signs (a coordinate that is
  zero in either gradient does not conflict);
* the raw dot product ``<g, g'>`` (Fig A7).

Pairs, for ``g`` of shape ``(N, T, D)`` (samples x tasks):

* ``inter_task`` / ``pairwise``: same sample, two different tasks, ``N T (T-1) / 2`` pairs;
* ``inter_sample`` / ``pairwise``: same task, two different samples, ``T N (N-1) / 2`` pairs;
* ``inter_sample`` / ``averaged``: pairs of samples of the task-mean gradient ``mean_t g[i, t]``;
* ``inter_task`` / ``averaged``: pairs of tasks of the batch-mean gradient ``mean_i g[i, t]``
  (the mean over the extracted samples) -- Fig A5.

Everything except the sign counts comes from one Gram matrix ``K = G G^T`` of the ``N T`` rows
(``(NT)^2 D`` multiply-adds instead of one pass over ``D`` per pair); the averaged variants are
block means of ``K``. The opposite-sign counts come from Gram matrices of the sign patterns:
``#opposite = <[g > 0], [g' < 0]> + <[g < 0], [g' > 0]>``. Both are accumulated in float64 over
chunks of coordinates (small on the CPU, where a chunk's patterns then stay in cache; large on a
GPU), so sign counts are exact and dot products do not lose precision with ``D`` in the
millions.

The *interference* measure of Gama & Grassi is the mean over tasks of the cosine between a task's
gradient and the average gradient; here the task gradients are the batch-mean gradients above.

:func:`summarise` turns the pairs of an epoch into the per-epoch rows of ``gradstats.csv``: for
every comparison x variant x statistic and for all pairs, the positive pairs (dot product > 0)
and the negative ones (< 0): count, mean, standard deviation (population, ddof 0) and the 2.5 %
and 97.5 % percentiles (linear interpolation). A pair with a zero-norm gradient has an undefined
cosine (NaN) and is left out of that statistic's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtl_paradigms.gradstats import STATISTICS, SUBSETS, SUMMARY_COLUMNS

#: Coordinates per Gram chunk on the CPU (the chunk's sign patterns stay in cache) and on a GPU
#: (few kernel launches). float32 sums of up to 2^24 terms of 0/1 are exact.
CPU_CHUNK = 8192
GPU_CHUNK = 2**22
PAIR_COLUMNS: tuple[str, ...] = ("comparison", "variant", "fixed", "first", "second", *STATISTICS)


def default_chunk(device: torch.device) -> int:
    return CPU_CHUNK if device.type == "cpu" else GPU_CHUNK


def gram_and_conflicts(a: Tensor, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """``(K, O)`` for the rows of ``a`` (``(R, D)``): the Gram matrix ``K = a a^T`` and the counts
    ``O[i, j]`` of coordinates where rows ``i`` and ``j`` have strictly opposite signs,
    ``O = P M^T + M P^T`` with ``P = [a > 0]``, ``M = [a < 0]``. Both in float64, accumulated over
    chunks of ``chunk`` columns (each multiplied in ``a``'s dtype; the counts are exact)."""
    chunk = default_chunk(a.device) if chunk is None else chunk
    if not 1 <= chunk <= 2**24:
        raise ValueError(f"chunk must be in 1..2^24, got {chunk}")
    r = a.shape[0]
    k = torch.zeros(r, r, dtype=torch.float64, device=a.device)
    pm = torch.zeros(r, r, dtype=torch.float64, device=a.device)
    dtype = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float32
    for start in range(0, a.shape[1], chunk):
        x = a[:, start : start + chunk].to(dtype)
        k += (x @ x.T).double()
        pm += ((x > 0).to(dtype) @ (x < 0).to(dtype).T).double()
    return k, pm + pm.T


def gram(a: Tensor, chunk: int | None = None) -> Tensor:
    """The Gram matrix ``a a^T`` in float64 (see :func:`gram_and_conflicts`)."""
    return gram_and_conflicts(a, chunk)[0]


def opposite_sign_counts(a: Tensor, chunk: int | None = None) -> Tensor:
    """``(R, R)`` counts of coordinates where rows ``i`` and ``j`` of ``a`` have opposite signs."""
    return gram_and_conflicts(a, chunk)[1]


@dataclass(frozen=True)
class StepStatistics:
    """The statistics of one extraction: every pair (tidy, :data:`PAIR_COLUMNS`) and the
    interference measure."""

    pairs: pd.DataFrame
    interference: float


def _pairs_from_gram(
    grams: Tensor, opposite: Tensor, dim: int, comparison: str, variant: str, fixed: Sequence[int]
) -> pd.DataFrame:
    """Pairs ``i < j`` of each ``(M, M)`` block of ``grams`` (``(B, M, M)``)."""
    m = grams.shape[-1]
    first, second = np.triu_indices(m, k=1)
    g = grams.cpu().numpy()
    o = opposite.cpu().numpy()
    norms_sq = np.diagonal(g, axis1=1, axis2=2)  # (B, M)
    dot = g[:, first, second]
    ni, nj = norms_sq[:, first], norms_sq[:, second]
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = dot / np.sqrt(ni * nj)
        magnitude = 2 * np.sqrt(ni * nj) / (ni + nj)
    b = g.shape[0]
    return pd.DataFrame(
        {
            "comparison": comparison,
            "variant": variant,
            "fixed": np.repeat(np.asarray(fixed, dtype=np.int64), len(first)),
            "first": np.tile(first, b),
            "second": np.tile(second, b),
            "cosine": cosine.reshape(-1),
            "magnitude": magnitude.reshape(-1),
            "conflict": (o[:, first, second] / dim).reshape(-1),
            "dot": dot.reshape(-1),
        },
        columns=list(PAIR_COLUMNS),
    )


def gradient_statistics(grads: Tensor, chunk: int | None = None) -> StepStatistics:
    """Every pair statistic of ``grads`` (``(N, T, D)``) and the interference measure.

    ``fixed`` is the shared index of a pairwise pair (the sample of an inter-task pair, the task of
    an inter-sample pair; -1 for the averaged variants); ``first``/``second`` index the compared
    samples or tasks.
    """
    if grads.ndim != 3:
        raise ValueError(f"gradients must be (samples, tasks, D), got {tuple(grads.shape)}")
    n, t, d = grads.shape
    k, o = gram_and_conflicts(grads.reshape(n * t, d), chunk)
    k4, o4 = k.view(n, t, n, t), o.view(n, t, n, t)
    samples = torch.arange(n, device=k4.device)
    tasks = torch.arange(t, device=k4.device)
    inter_task = k4[samples, :, samples, :]  # (N, T, T): same sample
    inter_task_o = o4[samples, :, samples, :]
    inter_sample = k4[:, tasks, :, tasks]  # (T, N, N): same task
    inter_sample_o = o4[:, tasks, :, tasks]
    # The averaged gradients' Grams are block means of K; their sign counts need the vectors.
    avg_sample = k4.mean(dim=(1, 3))  # Gram of the task-mean gradient of each sample
    avg_task = k4.mean(dim=(0, 2))  # Gram of the batch-mean gradient of each task
    _, avg_sample_o = gram_and_conflicts(grads.mean(dim=1), chunk)
    _, avg_task_o = gram_and_conflicts(grads.mean(dim=0), chunk)
    frames = [
        _pairs_from_gram(inter_sample, inter_sample_o, d, "inter_sample", "pairwise", range(t)),
        _pairs_from_gram(inter_task, inter_task_o, d, "inter_task", "pairwise", range(n)),
        _pairs_from_gram(avg_sample[None], avg_sample_o[None], d, "inter_sample", "averaged", [-1]),
        _pairs_from_gram(avg_task[None], avg_task_o[None], d, "inter_task", "averaged", [-1]),
    ]
    pairs = pd.concat([f for f in frames if len(f)], ignore_index=True)
    if pairs.empty:
        pairs = pd.DataFrame(columns=list(PAIR_COLUMNS))
    return StepStatistics(pairs, interference_from_gram(avg_task))


def interference_from_gram(task_gram: Tensor) -> float:
    """Gama & Grassi's interference: ``mean_t cos(g_t, mean_s g_s)`` from the tasks' Gram matrix.

    ``<g_t, m> = (K 1)_t / T`` and ``|m|^2 = 1^T K 1 / T^2`` for ``m = mean_s g_s``, so
    ``cos(g_t, m) = (K 1)_t / (sqrt(K_tt) sqrt(1^T K 1))``. NaN if ``m`` or every ``g_t`` is zero;
    a task with a zero gradient is left out of the mean.
    """
    k = task_gram.double()
    row = k.sum(dim=1)
    total = row.sum()
    if total <= 0:
        return float("nan")
    cos = row / (torch.sqrt(torch.diagonal(k)) * torch.sqrt(total))
    cos = cos[torch.isfinite(cos)]
    return float(cos.mean()) if cos.numel() else float("nan")


def describe(values: np.ndarray) -> dict[str, float]:
    """Count, mean, std (ddof 0), 2.5 % and 97.5 % percentiles of the finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "std": nan, "p2_5": nan, "p97_5": nan}
    p_lo, p_hi = np.percentile(v, [2.5, 97.5])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "p2_5": float(p_lo),
        "p97_5": float(p_hi),
    }


def summarise(
    pairs: pd.DataFrame,
    interference: Sequence[float] = (),
    keys: dict[str, object] | None = None,
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """Summary rows (:data:`~mtl_paradigms.gradstats.SUMMARY_COLUMNS`) of one group of pairs.

    ``keys`` are constant columns put in front (``{"epoch": 3}``); ``by`` names extra columns of
    ``pairs`` to group by as well (they become columns of the result). ``interference`` (one
    value per extraction) adds the row ``task_vs_mean / averaged / interference / all``.
    """
    keys = dict(keys or {})
    rows: list[dict[str, object]] = []
    group_cols = ["comparison", "variant", *by]
    for group_key, group in pairs.groupby(group_cols, sort=False):
        labels = dict(zip(group_cols, group_key, strict=True))
        dot = group["dot"].to_numpy(dtype=np.float64)
        masks = {"all": np.ones(len(group), dtype=bool), "positive": dot > 0, "negative": dot < 0}
        for subset in SUBSETS:
            for statistic in STATISTICS:
                values = group[statistic].to_numpy(dtype=np.float64)[masks[subset]]
                rows.append(
                    {**keys, **labels, "statistic": statistic, "subset": subset} | describe(values)
                )
    if len(interference):
        rows.append(
            {**keys, "comparison": "task_vs_mean", "variant": "averaged"}
            | dict.fromkeys(by, "all")
            | {"statistic": "interference", "subset": "all"}
            | describe(np.asarray(interference))
        )
    summary_columns = [c for c in SUMMARY_COLUMNS if c != "epoch" or c in keys]
    columns = list(dict.fromkeys([*keys, *by, *summary_columns]))
    return pd.DataFrame(rows, columns=columns)
