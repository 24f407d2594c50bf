"""Gradient statistics: per-sample x per-task gradients of the shared parameters and their pairs.

Elich et al. (2024), "Gradient conflicts" (Figs 4, A5-A7), and the interference measure of
Gama & Grassi. The pieces, each importable on its own:

* :mod:`.layers` -- the same ``(N, T, D)`` gradients from one batched forward and ``T`` backward
  passes, each layer's per-sample gradient from its input and output gradient (the default engine
  where every shared layer is a ``Conv2d``, ``Linear`` or BatchNorm).
* :mod:`.persample` -- the ``(N, T, D)`` gradients ``g[i, t] = d L_t(x_i) / d phi`` for the shared
  parameters ``phi``, with ``torch.func`` (``functional_call`` + ``vmap`` + ``jacrev``), and the
  explicit per-sample loop they are checked and benchmarked against; BatchNorm handling.
* :mod:`.stats` -- pair statistics from Gram matrices (cosine, magnitude similarity, ratio of
  conflicting coordinates, dot product), the averaged variants, the interference measure, and
  per-epoch summaries (mean, std, 2.5 % and 97.5 % percentiles) as a tidy table.
* :mod:`.extract` -- settings, the training callback (every ``k`` iterations during training,
  flushed per epoch), the gradient-statistics training run and extraction from saved checkpoints.
* :mod:`.fig3` -- Fig 3 turned into an experiment: a single task made of visually distinct
  sub-populations versus the same data split into per-sub-population tasks.

This ``__init__`` imports nothing heavy, so that :mod:`mtl_paradigms.analysis.gradstats_claims`
can use the table's column names without importing torch.
"""

from __future__ import annotations

#: Columns of the per-epoch summary table (``gradstats.csv``), in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "epoch",
    "comparison",  # inter_sample | inter_task | task_vs_mean
    "variant",  # pairwise | averaged
    "statistic",  # cosine | magnitude | conflict | dot | interference
    "subset",  # all | positive | negative (sign of the pair's dot product)
    "n",
    "mean",
    "std",
    "p2_5",
    "p97_5",
)
COMPARISONS: tuple[str, ...] = ("inter_sample", "inter_task")
STATISTICS: tuple[str, ...] = ("cosine", "magnitude", "conflict", "dot")
SUBSETS: tuple[str, ...] = ("all", "positive", "negative")
