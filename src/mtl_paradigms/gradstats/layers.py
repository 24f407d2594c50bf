"""Per-sample x per-task gradients layer by layer: one batched forward, ``T`` backward passes.

:func:`layerwise_per_sample_task_gradients` returns exactly the tensor of
:func:`~mtl_paradigms.gradstats.persample.per_sample_task_gradients` (``(N, T, D)``, the shared
parameters flattened in ``model.shared_parameters()`` order, the same BatchNorm statistics, no
dropout, no TF32), computed the way per-sample-gradient libraries do it:

1. one forward pass of the ``N`` samples as a batch, with forward hooks that keep each shared
   layer's input ``a`` and output ``y``; BatchNorm normalises with constants
   (:func:`~mtl_paradigms.gradstats.persample.extraction_buffers`), so samples do not interact
   and ``d (sum_i L_t(x_i)) / d y_i = d L_t(x_i) / d y_i``;
2. for each task the gradient of ``sum_i L_t(x_i)`` with respect to every kept output: ``T``
   backward passes of the batch (one vectorised pass on CUDA, as the trainer's task Jacobian);
3. per sample, the parameter gradient of each layer from its input and output gradient:
   ``Linear``: ``G_W[t, i] = sum_p g[t, i, p] a[i, p]^T``; ``Conv2d``: the same with ``a``
   unfolded into patches (any stride, padding, dilation and groups; zero padding);
   ``BatchNorm``: ``G_gamma = sum_p g x_hat``, ``G_beta = sum_p g`` over the positions ``p``.

The work is that of one training forward plus ``T`` backward passes of the ``N`` samples --
the least any method can do, since each task needs its own backward pass -- instead of ``N``
forwards and ``N T`` backwards of single samples (the loop) or ``vmap``'s per-sample batching
rules. A shared parameter owned by any other kind of module raises
:class:`UnsupportedLayerError` (``gradstats.extract.engine: auto`` then uses ``vmap``).

Every hooked output is replaced by a copy in the forward pass, so an in-place operation after
the layer (torchvision's ``ReLU(inplace=True)``) cannot overwrite the tensor the gradient is
taken with respect to. A layer called several times (weight sharing) sums its calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mtl_paradigms.gradstats.persample import (
    BNMode,
    _check_batch,
    _full,
    evaluation_mode,
    extraction_buffers,
    full_precision,
)
from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.tasks import Task

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


class UnsupportedLayerError(ValueError):
    """A shared parameter belongs to a module the layer-wise engine has no rule for."""


@dataclass
class _Call:
    inputs: Tensor
    output: Tensor
    x_hat: Tensor | None = None  # BatchNorm: the normalised input


@dataclass
class _Layer:
    module: nn.Module
    params: list[str]  # local names of the module's shared parameters ("weight", "bias")
    calls: list[_Call] = field(default_factory=list)


def _shared_layers(model: MultiTaskModel) -> tuple[dict[str, _Layer], list[tuple[str, str]]]:
    """Hooked layers by qualified name, and ``(layer, parameter)`` in shared-parameter order."""
    shared = {id(p): p for p in model.shared_parameters()}
    owners: dict[int, tuple[str, str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for local, p in module.named_parameters(recurse=False):
            if id(p) in shared and id(p) not in owners:
                owners[id(p)] = (module_name, local, module)
    layers: dict[str, _Layer] = {}
    order: list[tuple[str, str]] = []
    for p in model.shared_parameters():
        module_name, local, module = owners[id(p)]
        if not isinstance(module, SUPPORTED):
            raise UnsupportedLayerError(
                f"shared parameter {module_name}.{local} belongs to a {type(module).__name__}; "
                f"the layer-wise engine handles {[t.__name__ for t in SUPPORTED]} "
                "(use gradstats.extract.engine: vmap)"
            )
        if isinstance(module, nn.Conv2d) and (
            module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise UnsupportedLayerError(
                f"{module_name}: padding {module.padding!r}, padding_mode "
                f"{module.padding_mode!r} (explicit zero padding is handled)"
            )
        layers.setdefault(module_name, _Layer(module, [])).params.append(local)
        order.append((module_name, local))
    return layers, order


def supports_layerwise(model: MultiTaskModel) -> bool:
    """Whether every shared parameter belongs to a layer this engine handles."""
    try:
        _shared_layers(model)
    except UnsupportedLayerError:
        return False
    return True


def _hook(layer: _Layer):
    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = args[0].detach()
        x_hat = None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # the statistics functional_call put in place (the extraction's constants)
            shape = [1, -1] + [1] * (x.ndim - 2)
            mean = module.running_mean.view(shape)  # type: ignore[union-attr]
            var = module.running_var.view(shape)  # type: ignore[union-attr]
            x_hat = (x - mean) * torch.rsqrt(var + module.eps)
        copy = output.clone()
        layer.calls.append(_Call(x, output, x_hat))
        return copy

    return hook


def _conv_patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """``(N, groups, C_in/groups * kh * kw, L)``: the patches each output position sees."""
    cols = F.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=module.padding,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
    )  # fmt: skip
    n, _, positions = cols.shape
    return cols.view(n, module.groups, -1, positions)


def _write_layer_gradients(
    layer: _Layer, grads: Sequence[Tensor], slots: Mapping[str, Tensor]
) -> None:
    """Write the per-sample, per-task gradients of the layer's shared parameters into
    ``slots[name]`` (``(N, T, numel)`` views of the result); ``grads[c]`` is
    ``(T, *output.shape)`` for call ``c`` of the layer (calls are summed)."""
    module = layer.module
    for c, (call, g) in enumerate(zip(layer.calls, grads, strict=True)):
        parts: dict[str, Tensor] = {}
        t, n = g.shape[0], g.shape[1]
        if isinstance(module, nn.Linear):
            a = call.inputs.reshape(n, -1, module.in_features)
            gg = g.reshape(t, n, -1, module.out_features)
            parts["weight"] = torch.einsum("tnpo,npi->ntoi", gg, a)
            parts["bias"] = gg.sum(2).transpose(0, 1)
        elif isinstance(module, nn.Conv2d):
            cols = _conv_patches(module, call.inputs)  # (N, G, K, L)
            groups = module.groups
            gg = g.reshape(t, n, groups, module.out_channels // groups, -1)  # (T, N, G, O/G, L)
            parts["weight"] = torch.einsum("tngol,ngkl->ntgok", gg, cols)
            parts["bias"] = g.flatten(3).sum(-1).transpose(0, 1)
        else:  # BatchNorm with constant statistics: y = x_hat * gamma + beta
            assert call.x_hat is not None
            gx = g * call.x_hat.unsqueeze(0)
            if g.ndim > 3:  # positions; note that sum(()) would reduce every dimension
                gx, g = gx.flatten(3).sum(-1), g.flatten(3).sum(-1)
            parts["weight"] = gx.transpose(0, 1)
            parts["bias"] = g.transpose(0, 1)
        for name in layer.params:
            part = parts[name].reshape(n, t, -1)
            if c == 0:
                slots[name].copy_(part)
            else:
                slots[name].add_(part)


def layerwise_per_sample_task_gradients(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    images: Tensor,
    targets: Mapping[str, Tensor],
    *,
    bn: BNMode = "batch",
    stats_images: Tensor | None = None,
    batched: bool | None = None,
) -> Tensor:
    """The ``(N, T, D)`` per-sample, per-task gradients of the shared parameters, layer-wise.

    Arguments as :func:`~mtl_paradigms.gradstats.persample.per_sample_task_gradients`;
    ``batched``: one vectorised backward over the tasks (default: on CUDA) instead of ``T``.
    Raises :class:`UnsupportedLayerError` for a model with other kinds of shared layers.
    """
    _check_batch(tasks, images, targets)
    layers, order = _shared_layers(model)
    buffers = extraction_buffers(model, images if stats_images is None else stats_images, bn)
    batched = images.device.type == "cuda" if batched is None else batched
    n, num_tasks = images.shape[0], len(tasks)
    handles = [layer.module.register_forward_hook(_hook(layer)) for layer in layers.values()]
    try:
        with evaluation_mode(model), full_precision(), torch.enable_grad():
            preds = functional_call(model, buffers, (images,))
            # sum_i L_t(x_i): each sample's loss is its own mean over its valid pixels; one
            # scalar per task, so that task t's pass runs through its own head only
            sums = [
                torch.stack(
                    [
                        task.loss(_full(preds[name][i : i + 1]), targets[name][i : i + 1])
                        for i in range(n)
                    ]
                ).sum()
                for name, task in tasks.items()
            ]
            outputs = [call.output for layer in layers.values() for call in layer.calls]
            if batched and num_tasks > 1:
                stacked = torch.stack(sums)
                eye = torch.eye(num_tasks, dtype=stacked.dtype, device=stacked.device)
                raw = torch.autograd.grad(
                    stacked, outputs, grad_outputs=eye, is_grads_batched=True, allow_unused=True
                )
            else:
                per_task = [
                    torch.autograd.grad(total, outputs, retain_graph=True, allow_unused=True)
                    for total in sums
                ]
                raw = tuple(
                    None if all(p[k] is None for p in per_task)
                    else torch.stack([
                        torch.zeros_like(o) if p[k] is None else p[k]  # type: ignore[misc]
                        for p in per_task
                    ])
                    for k, o in enumerate(outputs)
                )  # fmt: skip
            grads = [
                torch.zeros((num_tasks, *o.shape), dtype=o.dtype, device=o.device) if g is None
                else g
                for g, o in zip(raw, outputs, strict=True)
            ]  # fmt: skip
            params = [layers[m].module.get_parameter(p) for m, p in order]
            sizes = [p.numel() for p in params]
            dtype = params[0].dtype if params else images.dtype
            result = torch.empty(n, num_tasks, sum(sizes), dtype=dtype, device=images.device)
            slots: dict[str, dict[str, Tensor]] = {name: {} for name in layers}
            offset = 0
            for (module_name, local), size in zip(order, sizes, strict=True):
                slots[module_name][local] = result[:, :, offset : offset + size]
                offset += size
            k = 0
            with torch.no_grad():
                for name, layer in layers.items():
                    calls = len(layer.calls)
                    if calls == 0:  # a layer the forward pass never reached
                        for slot in slots[name].values():
                            slot.zero_()
                    _write_layer_gradients(layer, grads[k : k + calls], slots[name])
                    k += calls
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            layer.calls.clear()
    return result
