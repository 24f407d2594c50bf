"""Per-sample x per-task gradients: the vmap path against explicit per-sample references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtl_paradigms.gradstats.persample import (
    batch_norm_statistics,
    loop_per_sample_task_gradients,
    per_sample_task_gradients,
    shared_parameter_names,
)
from mtl_paradigms.models import MultiTaskModel, build_model
from mtl_paradigms.tasks import make_task, make_tasks

N, H, W = 5, 8, 8


def small_model(batch_norm: bool) -> MultiTaskModel:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 4, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(6))
    layers.append(nn.ReLU())
    heads = {"segmentation": nn.Conv2d(6, 3, 1), "depth": nn.Conv2d(6, 1, 1)}
    model = MultiTaskModel(nn.Sequential(*layers), heads).double()
    if batch_norm:  # running statistics that differ from any batch's
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(N, 3, H, W, generator=g, dtype=torch.float64)
    seg = torch.randint(-1, 3, (N, H, W), generator=g)  # -1: ignored pixels
    depth = torch.rand(N, 1, H, W, generator=g, dtype=torch.float64)
    depth[depth < 0.2] = 0  # invalid pixels
    return images, {"segmentation": seg, "depth": depth}


TASKS = {"segmentation": make_task("segmentation", 3), "depth": make_task("depth")}


def flat(grads, params) -> torch.Tensor:
    pairs = zip(grads, params, strict=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in pairs])


def reference_eval(model: MultiTaskModel, images, targets) -> torch.Tensor:
    """Evaluation-mode network, one sample at a time, plain autograd."""
    ref = copy.deepcopy(model).eval()
    shared = ref.shared_parameters()
    rows = []
    for i in range(N):
        preds = ref(images[i : i + 1])
        rows.append(
            torch.stack(
                [
                    flat(
                        torch.autograd.grad(
                            task.loss(preds[n], targets[n][i : i + 1]),
                            shared,
                            retain_graph=True,
                            allow_unused=True,
                        ),
                        shared,
                    )
                    for n, task in TASKS.items()
                ]
            )
        )
    return torch.stack(rows)


def reference_batch_constants(model: MultiTaskModel, images, targets) -> torch.Tensor:
    """The full batch in training mode with every BatchNorm's batch statistics detached: the
    gradient of sample i's loss is then its gradient with the statistics as constants."""
    ref = copy.deepcopy(model).train()

    def detached_bn(module: nn.BatchNorm2d, args, _out):
        x = args[0]
        mean = x.mean((0, 2, 3), keepdim=True).detach()
        var = x.var((0, 2, 3), unbiased=False, keepdim=True).detach()
        w, b = module.weight.view(1, -1, 1, 1), module.bias.view(1, -1, 1, 1)
        return (x - mean) / torch.sqrt(var + module.eps) * w + b

    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(detached_bn)
    shared = ref.shared_parameters()
    preds = ref(images)
    rows = []
    for i in range(N):
        per_task = []
        for n, task in TASKS.items():
            loss = task.loss(preds[n][i : i + 1], targets[n][i : i + 1])
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            per_task.append(flat(grads, shared))
        rows.append(torch.stack(per_task))
    return torch.stack(rows)


@pytest.mark.parametrize(("batch_norm", "bn"), [(False, "batch"), (True, "eval"), (True, "batch")])
def test_vmap_equals_loop_and_the_independent_reference(batch_norm: bool, bn: str) -> None:
    model = small_model(batch_norm)
    images, targets = batch()
    vmapped = per_sample_task_gradients(model, TASKS, images, targets, bn=bn)
    looped = loop_per_sample_task_gradients(model, TASKS, images, targets, bn=bn)
    if bn == "eval" or not batch_norm:
        reference = reference_eval(model, images, targets)
    else:
        reference = reference_batch_constants(model, images, targets)
    d = sum(p.numel() for p in model.shared_parameters())
    assert vmapped.shape == (N, len(TASKS), d)
    assert vmapped.abs().max() > 0
    torch.testing.assert_close(vmapped, looped, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vmapped, reference, rtol=1e-9, atol=1e-12)


def test_batch_and_eval_statistics_give_different_gradients() -> None:
    model = small_model(True)
    images, targets = batch()
    a = per_sample_task_gradients(model, TASKS, images, targets, bn="batch")
    b = per_sample_task_gradients(model, TASKS, images, targets, bn="eval")
    assert not torch.allclose(a, b)


def test_a_subset_uses_the_full_batch_statistics() -> None:
    model = small_model(True)
    images, targets = batch()
    full = per_sample_task_gradients(model, TASKS, images, targets, bn="batch")
    idx = torch.tensor([1, 3])
    subset = per_sample_task_gradients(
        model, {"depth": TASKS["depth"]}, images[idx], {"depth": targets["depth"][idx]},
        bn="batch", stats_images=images, chunk_size=1,
    )  # fmt: skip
    torch.testing.assert_close(subset[:, 0], full[idx, 1], rtol=1e-9, atol=1e-12)


def test_the_model_is_left_as_it_was() -> None:
    model = small_model(True)
    model.train()
    model.heads["depth"].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = batch()
    rng = torch.get_rng_state()
    per_sample_task_gradients(model, TASKS, images, targets, bn="batch")
    assert [m.training for m in model.modules()] == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_batch_statistics_are_the_training_mode_statistics() -> None:
    model = small_model(True)
    images, _ = batch()
    stats = batch_norm_statistics(model, images)
    first = model.encoder[1]
    x = model.encoder[0](images)
    torch.testing.assert_close(stats["encoder.1.running_mean"], x.mean((0, 2, 3)))
    torch.testing.assert_close(stats["encoder.1.running_var"], x.var((0, 2, 3), unbiased=False))
    assert first.running_mean.shape == stats["encoder.1.running_mean"].shape


def test_segnet_vmap_equals_loop() -> None:
    """The real network: scatter-based unpooling, in-place ReLU, BatchNorm everywhere (float64:
    in float32 the two paths round differently, relative error ~1e-4; benchmarks/gradstats.py
    reports it)."""
    dtype = torch.float64
    torch.manual_seed(0)
    tasks = make_tasks("nyuv2", 4)
    model = build_model("segnet", {n: t.out_channels for n, t in tasks.items()}, width=0.125)
    model = model.to(dtype)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g).to(dtype)
    targets = {
        "segmentation": torch.randint(0, 4, (2, 32, 32), generator=g),
        "depth": (torch.rand(2, 1, 32, 32, generator=g) + 0.1).to(dtype),
        "normal": nn.functional.normalize(torch.randn(2, 3, 32, 32, generator=g), dim=1).to(dtype),
    }
    vmapped = per_sample_task_gradients(model, tasks, images[:2], targets, stats_images=images)
    looped = loop_per_sample_task_gradients(model, tasks, images[:2], targets, stats_images=images)
    assert vmapped.shape == (2, 3, sum(p.numel() for p in model.shared_parameters()))
    torch.testing.assert_close(vmapped, looped, rtol=1e-9, atol=1e-12)
    assert shared_parameter_names(model)[0].startswith("encoder.")


def test_bad_inputs_are_named() -> None:
    model = small_model(True)
    images, targets = batch()
    with pytest.raises(ValueError, match="bn must be one of"):
        per_sample_task_gradients(model, TASKS, images, targets, bn="train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lack task"):
        per_sample_task_gradients(model, TASKS, images, {"depth": targets["depth"]})
    model.encoder[1].running_mean = None
    model.encoder[1].running_var = None
    with pytest.raises(ValueError, match=r"encoder\.1"):
        per_sample_task_gradients(model, TASKS, images, targets, bn="eval")


def test_full_precision_switches_tf32_off_and_restores_the_flags() -> None:
    from mtl_paradigms.gradstats.persample import full_precision

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with full_precision():
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vmap_equals_the_loop_on_cuda_at_full_width_despite_tf32_defaults() -> None:
    # With cuDNN's TF32 default the two paths differed by ~70 % in norm at this size on an H100.
    torch.manual_seed(0)
    tasks = make_tasks("nyuv2", 13)
    model = build_model("segnet", {k: t.out_channels for k, t in tasks.items()}, width=1.0).cuda()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 96, 128, generator=gen).cuda()
    targets = {
        "segmentation": torch.randint(0, 13, (8, 96, 128), generator=gen).cuda(),
        "depth": torch.rand(8, 1, 96, 128, generator=gen).cuda() + 0.1,
        "normal": nn.functional.normalize(torch.randn(8, 3, 96, 128, generator=gen), dim=1).cuda(),
    }
    sub = {k: v[:3] for k, v in targets.items()}
    a = per_sample_task_gradients(model, tasks, images[:3], sub, stats_images=images)
    b = loop_per_sample_task_gradients(model, tasks, images[:3], sub, stats_images=images)
    assert float((a - b).norm() / b.norm()) < 1e-4
