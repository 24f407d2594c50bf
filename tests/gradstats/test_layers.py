"""The layer-wise engine against the explicit per-sample loop and the vmap path."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mtl_paradigms.gradstats.extract import GradStatsSettings, extract
from mtl_paradigms.gradstats.layers import (
    UnsupportedLayerError,
    layerwise_per_sample_task_gradients,
    supports_layerwise,
)
from mtl_paradigms.gradstats.persample import (
    loop_per_sample_task_gradients,
    per_sample_task_gradients,
)
from mtl_paradigms.models import MultiTaskModel, build_model
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import attribute_tasks, make_task, make_tasks


class _Trunk(nn.Module):
    """Every layer kind and option the engine handles, an in-place ReLU after a BatchNorm, and
    a convolution applied twice (shared weights: its per-sample gradient sums both calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.twice = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 12)
        self.bn1d = nn.BatchNorm1d(12)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = torch.tanh(self.grouped(x))
        x = self.twice(torch.relu(self.twice(x)))
        x = self.fc(self.pool(x).flatten(1))
        return self.bn1d(x).view(-1, 12, 1, 1).expand(-1, 12, 4, 4)


def _model() -> MultiTaskModel:
    torch.manual_seed(0)
    heads = {"segmentation": nn.Conv2d(12, 3, 1), "depth": nn.Conv2d(12, 1, 1)}
    model = MultiTaskModel(_Trunk(), heads).double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model


TASKS = {"segmentation": make_task("segmentation", 3), "depth": make_task("depth")}


def _batch(n: int) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    depth = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    depth[depth < 0.2] = 0  # invalid pixels
    return images, {"segmentation": torch.randint(-1, 3, (n, 8, 8), generator=g), "depth": depth}


@pytest.mark.parametrize("bn", ["batch", "eval"])
@pytest.mark.parametrize("batched", [False, True])
def test_layerwise_equals_the_loop_on_every_layer_kind(bn: str, batched: bool) -> None:
    model = _model()
    images, targets = _batch(6)
    sub = {k: v[:4] for k, v in targets.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = layerwise_per_sample_task_gradients(
        model,
        TASKS,
        images[:4],
        sub,
        bn=bn,
        stats_images=images,
        batched=batched,  # type: ignore[arg-type]
    )
    want = loop_per_sample_task_gradients(model, TASKS, images[:4], sub, bn=bn, stats_images=images)  # type: ignore[arg-type]
    assert got.shape == want.shape == (4, 2, sum(p.numel() for p in model.shared_parameters()))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got.abs().amax() > 0
    # nothing of the model changed (buffers, training flags); the hooks are gone
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "width", "tasks"),
    [("segnet", 0.125, "nyuv2"), ("resnet18", 1.0, "celeba")],
)
def test_layerwise_equals_vmap_on_the_project_networks(arch: str, width: float, tasks: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if tasks == "celeba":
        task_map = attribute_tasks(["smiling", "young"])
        images = torch.rand(4, 3, 32, 32, generator=g)
        targets = {k: torch.randint(0, 2, (4,), generator=g).float() for k in task_map}
    else:
        task_map = make_tasks("nyuv2", 13)
        images = torch.rand(4, 3, 32, 32, generator=g)
        targets = {
            "segmentation": torch.randint(0, 13, (4, 32, 32), generator=g),
            "depth": torch.rand(4, 1, 32, 32, generator=g) + 0.1,
            "normal": nn.functional.normalize(torch.randn(4, 3, 32, 32, generator=g), dim=1),
        }
    model = build_model(arch, {k: t.out_channels for k, t in task_map.items()}, width=width)
    model = model.double()
    images = images.double()
    targets = {k: v.double() if v.is_floating_point() else v for k, v in targets.items()}
    sub = {k: v[:2] for k, v in targets.items()}
    got = layerwise_per_sample_task_gradients(model, task_map, images[:2], sub, stats_images=images)
    want = per_sample_task_gradients(model, task_map, images[:2], sub, stats_images=images)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-13)


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm([4, 8, 8])

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


def test_an_unsupported_shared_layer_is_named_and_auto_falls_back_to_vmap() -> None:
    torch.manual_seed(0)
    model = MultiTaskModel(
        _Odd(), {"segmentation": nn.Conv2d(4, 3, 1), "depth": nn.Conv2d(4, 1, 1)}
    ).double()
    images, targets = _batch(4)
    targets = {
        "segmentation": torch.randint(0, 3, (4, 8, 8)),
        "depth": torch.rand(4, 1, 8, 8, dtype=torch.float64) + 0.1,
    }
    assert not supports_layerwise(model)
    with pytest.raises(UnsupportedLayerError, match=r"encoder\.norm\.weight.*LayerNorm"):
        layerwise_per_sample_task_gradients(model, TASKS, images, targets)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(UnsupportedLayerError):
        extract(
            model, TASKS, images, targets, GradStatsSettings(samples=2, engine="layerwise"), gen
        )
    auto = extract(model, TASKS, images, targets, GradStatsSettings(samples=2), gen)
    assert len(auto.statistics.pairs) > 0


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")],
)
def test_convolutions_without_explicit_zero_padding_are_refused(conv: nn.Conv2d) -> None:
    model = MultiTaskModel(nn.Sequential(conv), {"depth": nn.Conv2d(4, 1, 1)})
    assert not supports_layerwise(model)


def test_auto_and_both_engines_give_the_same_statistics() -> None:
    model = _model()
    images, targets = _batch(6)
    results = {}
    for engine in ("auto", "layerwise", "vmap"):
        gen = torch.Generator().manual_seed(3)
        results[engine] = extract(
            model, TASKS, images, targets, GradStatsSettings(samples=4, engine=engine), gen
        )
    for engine in ("auto", "vmap"):
        assert results[engine].samples == results["layerwise"].samples
        a = results[engine].statistics.pairs.drop(columns=["comparison", "variant"])
        b = results["layerwise"].statistics.pairs.drop(columns=["comparison", "variant"])
        torch.testing.assert_close(
            torch.tensor(a.to_numpy(float)), torch.tensor(b.to_numpy(float)), rtol=1e-9, atol=1e-12
        )


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(SettingsError, match="engine"):
        GradStatsSettings(engine="fast")  # type: ignore[arg-type]
