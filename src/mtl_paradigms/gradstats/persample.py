"""Per-sample x per-task gradients of the shared parameters, with ``torch.func``.

For a :class:`~mtl_paradigms.models.MultiTaskModel`, samples ``x_1..x_N`` and tasks ``1..T``,
:func:`per_sample_task_gradients` returns the ``(N, T, D)`` tensor

    g[i, t] = d L_t(x_i) / d phi,

with ``phi`` the flattened shared parameters (``model.shared_parameters()``, in that order) and
``L_t(x_i)`` task ``t``'s loss on the single sample ``x_i`` (its mean over the sample's valid
pixels, as :mod:`mtl_paradigms.tasks` defines it for any batch). It is one ``vmap`` over samples
of ``jacrev`` over the ``T`` losses of a ``functional_call`` of the model: one forward and ``T``
vector-Jacobian products per sample, batched, instead of a Python loop.
:func:`loop_per_sample_task_gradients` is that loop, the reference it is tested and benchmarked
against.

BatchNorm
---------
A network in training mode normalises each sample with the statistics of the whole batch, so a
sample's loss depends on the other samples, and under ``vmap`` each sample would be a batch of one.
The extraction therefore never runs BatchNorm in training mode; ``bn`` chooses the statistics:

* ``"batch"`` (default): the mean and (biased) variance of each BatchNorm input over the *full*
  training batch, computed once per extraction by a forward pass without gradients, then used as
  constants. Each sample is normalised exactly as in the training step's forward pass; the only
  difference to the training gradient is the path through the batch statistics, which is dropped
  (it couples samples).
* ``"eval"``: the layers' running statistics (evaluation mode).

Either way the module's buffers are left untouched (the statistics pass works on copies) and the
extraction consumes no random numbers of the trainer. The whole model runs in evaluation mode
during the extraction, so dropout (DeepLabV3's ASPP) is off; every module's training flag is
restored afterwards. BatchNorm layers without running statistics (``track_running_stats=False``)
are refused: they cannot be evaluated per sample.

Precision
---------
Both functions run with TF32 switched off (:func:`full_precision`): on an H100, cuDNN's default
TF32 convolutions changed SegNet's per-sample gradients at NYUv2's resolution by 72 % in norm
between the vmap and the loop path (7e-6 without TF32; measured 2026-11-22), which would make
the pair statistics depend on the kernel the library happens to pick. Mixed precision (bf16
autocast) is not used for the extraction either.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.tasks import Task

BNMode = Literal["batch", "eval"]
BN_MODES: tuple[str, ...] = ("batch", "eval")


def shared_parameter_names(model: MultiTaskModel) -> list[str]:
    """Qualified names of ``model.shared_parameters()``, in that order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for p in model.shared_parameters()]


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer of ``model`` with its qualified name."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@contextmanager
def full_precision() -> Iterator[None]:
    """float32 arithmetic in CUDA convolutions and matrix products (no TF32) inside the block."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in evaluation mode; restore each module's own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _check_running_stats(model: nn.Module) -> None:
    for name, layer in batch_norm_layers(model):
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"BatchNorm layer {name!r} keeps no running statistics "
                "(track_running_stats=False): per-sample gradients are undefined for it"
            )


def batch_norm_statistics(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """The statistics every BatchNorm layer sees on the batch ``images`` in training mode.

    Returns buffer name -> value: ``<layer>.running_mean`` the per-channel mean and
    ``<layer>.running_var`` the biased variance of the layer's input (what training-mode
    BatchNorm normalises with). Runs one forward pass without gradients with the BatchNorm layers
    in training mode on *copies* of the buffers (every other module in evaluation mode), so the
    model's running statistics are not changed.
    """
    _check_running_stats(model)
    layers = batch_norm_layers(model)
    stats: dict[str, Tensor] = {}

    def capture(name: str, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        dims = [d for d in range(x.ndim) if d != 1]
        stats[f"{name}.running_mean"] = x.mean(dims).detach()
        stats[f"{name}.running_var"] = x.var(dims, unbiased=False).detach()

    handles = [
        layer.register_forward_pre_hook(functools.partial(capture, name)) for name, layer in layers
    ]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    try:
        with torch.no_grad(), evaluation_mode(model):
            for _, layer in layers:
                layer.train()
            functional_call(model, buffers, (images,))
    finally:
        for handle in handles:
            handle.remove()
    return stats


def extraction_buffers(model: nn.Module, images: Tensor, bn: BNMode) -> dict[str, Tensor]:
    """The buffers the per-sample forward passes use (see the module's BatchNorm section)."""
    if bn not in BN_MODES:
        raise ValueError(f"gradstats bn must be one of {list(BN_MODES)}, got {bn!r}")
    _check_running_stats(model)
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    if bn == "batch":
        with full_precision():
            buffers |= batch_norm_statistics(model, images)
    return buffers


def _full(t: Tensor) -> Tensor:
    """Half-precision outputs in float32; float32 and float64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_batch(tasks: Mapping[str, Task], images: Tensor, targets: Mapping[str, Tensor]) -> None:
    if not tasks:
        raise ValueError("per-sample gradients need at least one task")
    missing = [name for name in tasks if name not in targets]
    if missing:
        raise ValueError(f"targets lack task(s) {missing}")
    for name in tasks:
        if targets[name].shape[0] != images.shape[0]:
            raise ValueError(
                f"target {name!r} has {targets[name].shape[0]} samples, images {images.shape[0]}"
            )


def per_sample_task_gradients(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    images: Tensor,
    targets: Mapping[str, Tensor],
    *,
    bn: BNMode = "batch",
    stats_images: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The ``(N, T, D)`` gradients of each task's loss on each sample, by ``vmap``/``jacrev``.

    ``tasks`` (name -> task, in the order of the ``T`` axis) may be a subset of the model's heads.
    ``stats_images`` is the batch whose BatchNorm statistics ``bn="batch"`` uses (default
    ``images``; the trainer passes the full training batch when ``images`` is a subset of it).
    ``chunk_size`` bounds how many samples ``vmap`` processes at once (memory; ``None``: all).
    The result has the model's dtype and device; no ``.grad`` is touched.
    """
    _check_batch(tasks, images, targets)
    names = shared_parameter_names(model)
    named = dict(model.named_parameters())
    shared = {name: named[name].detach() for name in names}
    buffers = extraction_buffers(model, images if stats_images is None else stats_images, bn)
    task_items = list(tasks.items())
    batch_targets = {name: targets[name] for name in tasks}

    def sample_losses(params: dict[str, Tensor], x: Tensor, target: dict[str, Tensor]) -> Tensor:
        preds = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return torch.stack(
            [task.loss(_full(preds[name]), target[name].unsqueeze(0)) for name, task in task_items]
        )

    per_sample = vmap(jacrev(sample_losses), in_dims=(None, 0, 0), chunk_size=chunk_size)
    # no_grad keeps ordinary autograd from recording the heads' parameters; torch.func's
    # transforms ignore an enclosing no_grad.
    with torch.no_grad(), evaluation_mode(model), full_precision():
        jac = per_sample(shared, images, batch_targets)
    n, t = images.shape[0], len(task_items)
    return torch.cat([jac[name].reshape(n, t, -1) for name in names], dim=2)


def loop_per_sample_task_gradients(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    images: Tensor,
    targets: Mapping[str, Tensor],
    *,
    bn: BNMode = "batch",
    stats_images: Tensor | None = None,
) -> Tensor:
    """The same ``(N, T, D)`` tensor by an explicit loop: per sample one forward, ``T`` backwards.

    The reference of :func:`per_sample_task_gradients` (same BatchNorm statistics, plain
    ``torch.autograd.grad``), for tests and the benchmark.
    """
    _check_batch(tasks, images, targets)
    shared = model.shared_parameters()
    buffers = extraction_buffers(model, images if stats_images is None else stats_images, bn)
    rows = []
    with evaluation_mode(model), full_precision():
        for i in range(images.shape[0]):
            preds = functional_call(model, buffers, (images[i : i + 1],))
            per_task = []
            for name, task in tasks.items():
                loss = task.loss(_full(preds[name]), targets[name][i : i + 1])
                grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
                per_task.append(
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(grads, shared, strict=True)
                        ]
                    )
                )
            rows.append(torch.stack(per_task))
    return torch.stack(rows)
