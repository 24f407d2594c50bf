"""RotoGrad (Javaloy & Valera, ICLR 2022): per-task rotations of the shared representation and
homogenised gradient magnitudes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl_paradigms.methods.base import Aggregator, check_matrix


class Rotation(nn.Module):
    """``z -> R z`` over the channel dimension (dim 1), ``R = exp(A - A^T)`` in SO(C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.generator = nn.Parameter(torch.zeros(channels, channels))

    def matrix(self) -> Tensor:
        a = self.generator
        return torch.linalg.matrix_exp(a - a.T)

    def forward(self, z: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", self.matrix().to(z.dtype), z)


class RotoGrad(Aggregator):
    """RotoGrad: rotate each task's view of the shared representation ``z`` and give every task
    a gradient of the same magnitude at ``z``.

    Each task ``t`` sees ``r_t = R_t z`` (``R_t`` a learnt rotation of the channels, identity at
    the start, registered in the model's ``task_transforms`` by :meth:`attach` so evaluation uses
    it too). The trainer hands over ``u_t = dL_t/dz`` (``representation = True``).

    *Magnitudes*: with ``n_t = |u_t|``, the first step's ``n_t^0`` and the relative convergence
    ``c_t = n_t / n_t^0``, ``alpha = c / sum(c)``; every task's gradient is rescaled to the common
    norm ``G = sum_t alpha_t n_t`` and the encoder receives their **mean** ``(1/T) sum_t G u_t/n_t``
    (the reference sums, a factor ``T``); the reported weights are ``G / (T n_t)``.

    *Rotations*: ``R_t`` is moved by its own Adam (``rotation_lr``) to minimise
    ``-cos(R_t^T g_t, v)`` per sample, with ``g_t = dL_t/dr_t`` held fixed and ``v`` the encoder's
    (detached) update direction: each task's rotated gradient is turned towards the consensus.
    The heads receive ``(1/T) grad L_t``. Rotations act on the channel dimension at every spatial
    position, so their cost is ``C x C`` per task (a matrix exponential each step).
    """

    name = "rotograd"
    representation = True

    def __init__(self, rotation_lr: float = 1e-3) -> None:
        if not rotation_lr > 0:
            raise ValueError(f"rotograd: rotation_lr must be positive, got {rotation_lr}")
        self.rotation_lr = float(rotation_lr)
        self._rotations: list[Rotation] = []
        self._optimizer: torch.optim.Adam | None = None
        self._initial: Tensor | None = None
        self._z_shape: torch.Size | None = None

    def attach(self, model: nn.Module) -> None:
        """Register one rotation per task in ``model.task_transforms`` (called by the trainer)."""
        channels = int(model.encoder.out_channels)
        device = next(model.parameters()).device
        self._rotations = []
        for task in model.heads:
            rotation = Rotation(channels).to(device)
            model.task_transforms[task] = rotation
            self._rotations.append(rotation)
        self._optimizer = torch.optim.Adam(
            [r.generator for r in self._rotations], lr=self.rotation_lr
        )
        self._initial = None

    def observe_representation(self, z: Tensor) -> None:
        self._z_shape = z.shape

    def __call__(self, grads: Tensor) -> Tensor:
        return self.aggregate(grads)[0]

    def aggregate(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        check_matrix(grads)
        num_tasks = grads.shape[-2]
        tiny = torch.finfo(grads.dtype).tiny
        norms = grads.norm(dim=-1)
        if self._initial is None:
            self._initial = norms.detach().clone()
        ratios = norms / self._initial.clamp_min(tiny)
        alpha = ratios / ratios.sum(dim=-1, keepdim=True).clamp_min(tiny)
        common = (alpha * norms).sum(dim=-1, keepdim=True)
        weights = common / (num_tasks * norms.clamp_min(tiny))
        weights = torch.where(norms > 0, weights, 0.0)
        direction = (weights.unsqueeze(-1) * grads).sum(dim=-2)
        if self._rotations and self._z_shape is not None:
            self._rotate(grads.detach(), direction.detach())
        return direction, weights

    def _rotate(self, grads: Tensor, direction: Tensor) -> None:
        """One Adam step of the rotations towards the consensus direction."""
        assert self._optimizer is not None
        assert self._z_shape is not None
        shape = self._z_shape
        target = direction.view(shape).flatten(1)
        self._optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = torch.zeros((), device=grads.device)
            for t, rotation in enumerate(self._rotations):
                r = rotation.matrix()
                u = grads[t].view(shape)
                g = torch.einsum("ij,bj...->bi...", r.detach(), u)  # dL_t/dr_t = R_t u_t, fixed
                back = torch.einsum("ji,bj...->bi...", r, g).flatten(1)  # R_t^T g_t
                cos = nn.functional.cosine_similarity(back, target, dim=1, eps=1e-12)
                loss = loss - cos.mean()
            loss.backward()
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, object]:
        return {
            "optimizer": self._optimizer.state_dict() if self._optimizer else None,
            "initial": None if self._initial is None else self._initial.clone(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        if self._optimizer is not None and state["optimizer"] is not None:
            self._optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        initial = state["initial"]
        self._initial = None if initial is None else initial  # type: ignore[assignment]
