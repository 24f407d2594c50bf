"""Hard parameter sharing with an explicit shared / task-specific split.

A :class:`MultiTaskModel` is one shared ``encoder`` (everything every task uses) and one head
per task in ``heads``. The split is structural: a parameter belongs to the encoder or to exactly
one head, never to both, so

* :meth:`MultiTaskModel.shared_parameters` are the parameters gradient methods aggregate over
  (the "shared" gradients of the methods and of the gradient statistics), and
* :meth:`MultiTaskModel.task_parameters` ``(t)`` are reached by task ``t``'s loss alone.

The shared representation ``z = encoder(x)`` is exposed (:meth:`MultiTaskModel.representation`)
so that a trainer can compute per-task gradients with respect to ``z`` or run the heads on a
detached ``z``. Heads return raw outputs: segmentation logits, unnormalised depth, unnormalised
normal vectors (the normal task L2-normalises them, see :mod:`mtl_paradigms.tasks`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn


class MultiTaskModel(nn.Module):
    """A shared encoder followed by one head per task.

    Parameters
    ----------
    encoder:
        Maps the input batch ``x`` to the shared representation ``z``.
    heads:
        Task name -> head; a head maps ``z`` to that task's raw output.
    arch:
        A label for logs and checkpoints (``"segnet"``, ``"deeplabv3"``, ...).
    single_task:
        ``True`` for a single-task (STL) baseline network; it then has exactly one head.

    Spatial head outputs (4-D, ``N x C x h x w``) whose size differs from the requested output
    size are bilinearly resized to it (``align_corners=True``, as LibMTL's NYUv2/Cityscapes
    trainers do); outputs of other ranks are returned unchanged.
    """

    def __init__(
        self,
        encoder: nn.Module,
        heads: Mapping[str, nn.Module],
        *,
        arch: str = "",
        single_task: bool = False,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a multi-task model needs at least one task head")
        if single_task and len(heads) != 1:
            raise ValueError(
                f"a single-task model has exactly one head, got {len(heads)}: {sorted(heads)}"
            )
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        # Optional per-task maps applied to z before the head (RotoGrad's rotations); they are
        # neither shared nor task parameters: the method that registers them trains them.
        self.task_transforms = nn.ModuleDict()
        self.arch = arch
        self.single_task = single_task

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def representation(self, x: Tensor) -> Tensor:
        """The shared representation ``z = encoder(x)``."""
        return self.encoder(x)

    def heads_forward(
        self, z: Tensor, out_size: tuple[int, int] | None = None
    ) -> dict[str, Tensor]:
        """Every head on ``z``; spatial outputs resized to ``out_size`` when it is given."""
        size = None if out_size is None else (int(out_size[0]), int(out_size[1]))
        outputs: dict[str, Tensor] = {}
        for task, head in self.heads.items():
            y = head(self.task_transforms[task](z) if task in self.task_transforms else z)
            if size is not None and y.ndim == 4 and tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
            outputs[task] = y
        return outputs

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``heads_forward(representation(x), x.shape[-2:])``."""
        size = (int(x.shape[-2]), int(x.shape[-1])) if x.ndim == 4 else None
        return self.heads_forward(self.representation(x), size)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters (shared by all tasks)."""
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters of ``task``'s head (reached by that task's loss only)."""
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; the model's tasks are {list(self.heads)}")
        return list(self.heads[task].parameters())

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, tasks={list(self.heads)}, single_task={self.single_task}"


def count_parameters(params: nn.Module | list[nn.Parameter]) -> int:
    """Number of scalar parameters of a module or a parameter list."""
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    return sum(p.numel() for p in params)


RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
"""The modules of a torchvision ResNet before its pooling head, under torchvision's names (so
torchvision's ImageNet weights load into an encoder that holds them)."""


def take_resnet_trunk(encoder: nn.Module, resnet: nn.Module) -> None:
    """Register ``resnet``'s stem and ``layer1``-``layer4`` on ``encoder`` under their names."""
    for name in RESNET_TRUNK:
        setattr(encoder, name, getattr(resnet, name))
