"""Multi-task networks with an explicit shared / task-specific split.

:func:`build_model` makes the two dense-prediction networks of Elich et al. (2024):

* ``"segnet"``: MTAN's hard-sharing SegNet (:mod:`.segnet`); shared = the whole
  encoder-decoder; head = ``Conv3x3 + Conv1x1``.
* ``"deeplabv3"``: dilated ResNet-50 (output stride 8) + one ASPP head per task (:mod:`.deeplab`).
* ``"resnet18"``: ResNet-18 up to global pooling + one linear layer per task (:mod:`.resnet`),
  the CelebA network (binary attributes: one logit per task).

Every model is a :class:`MultiTaskModel`: ``model(x)`` returns ``{task: raw output}`` at the
input resolution, ``shared_parameters()`` / ``task_parameters(t)`` split the parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from torch import nn

from .base import MultiTaskModel, count_parameters
from .deeplab import deeplab_widths, dilated_resnet50
from .heads import aspp_head, segnet_head
from .resnet import linear_head, resnet18_encoder
from .segnet import SegNetEncoderDecoder, init_mtan_, segnet_filters

__all__ = [
    "ARCHITECTURES",
    "MultiTaskModel",
    "build_model",
    "count_parameters",
    "segnet_filters",
]

Arch = Literal["segnet", "deeplabv3", "resnet18"]
ARCHITECTURES: tuple[str, ...] = ("segnet", "deeplabv3", "resnet18")


def _check_tasks(tasks: Mapping[str, int]) -> dict[str, int]:
    if not tasks:
        raise ValueError("tasks is empty: give at least one task name -> output channels")
    checked: dict[str, int] = {}
    for name, channels in tasks.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"task names must be non-empty strings without '/', got {name!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(
                f"task {name!r}: output channels must be a positive integer, got {channels!r}"
            )
        checked[name] = channels
    return checked


def build_model(
    arch: Arch,
    tasks: Mapping[str, int],
    width: float = 1.0,
    pretrained: bool = False,
    single_task: bool = False,
) -> MultiTaskModel:
    """Build a hard-parameter-sharing network.

    Parameters
    ----------
    arch:
        ``"segnet"`` or ``"deeplabv3"``.
    tasks:
        Task name -> output channels (segmentation: number of classes; depth: 1; normals: 3).
        Heads are created in this order; names must not contain ``/`` (metric keys are
        ``"task/metric"``).
    width:
        Multiplies the filter counts; ``1.0`` is the paper's network (see :mod:`.segnet` and
        :mod:`.deeplab` for what a narrower network is).
    pretrained:
        DeepLabV3 only: ImageNet weights for the ResNet-50 encoder (downloads once).
    single_task:
        A single-task (STL) baseline: exactly one task; the same encoder with one head.

    Random initialisation uses the global torch generator: seed with ``torch.manual_seed``.
    """
    task_channels = _check_tasks(tasks)
    if single_task and len(task_channels) != 1:
        raise ValueError(
            f"single_task=True needs exactly one task, got {list(task_channels)}; "
            "build one single-task model per task"
        )
    heads: dict[str, nn.Module]
    encoder: nn.Module
    if arch == "segnet":
        if pretrained:
            raise ValueError("no pretrained weights exist for SegNet; use pretrained=False")
        encoder = SegNetEncoderDecoder(width)
        feat = encoder.out_channels
        heads = {t: init_mtan_(segnet_head(feat, c)) for t, c in task_channels.items()}
    elif arch == "deeplabv3":
        _, aspp_channels = deeplab_widths(width)
        encoder = dilated_resnet50(width, pretrained=pretrained)
        feat = encoder.out_channels
        heads = {t: aspp_head(feat, c, channels=aspp_channels) for t, c in task_channels.items()}
    elif arch == "resnet18":
        if width != 1.0:
            raise ValueError(f"resnet18 has no width variants (torchvision's); got width={width}")
        encoder = resnet18_encoder(pretrained=pretrained)
        heads = {t: linear_head(encoder.out_channels, c) for t, c in task_channels.items()}
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {list(ARCHITECTURES)}")
    return MultiTaskModel(encoder, heads, arch=arch, single_task=single_task)
