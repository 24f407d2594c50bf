"""SegNet and DeepLabV3 multi-task models: shapes, the parameter split, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from mtl_paradigms.models import MultiTaskModel, build_model, count_parameters, segnet_filters
from mtl_paradigms.models.heads import aspp_head
from mtl_paradigms.models.segnet import max_unpool
from mtl_paradigms.tasks import make_tasks

NYU = {"segmentation": 13, "depth": 1, "normal": 3}
# (arch, width, input size): SegNet at a size divisible by 32 and at the smoke size 48x64.
CASES = [
    ("segnet", 0.125, (32, 64)),
    ("segnet", 0.125, (48, 64)),
    ("deeplabv3", 1.0, (32, 32)),
]


@pytest.fixture(scope="module")
def models() -> dict[str, MultiTaskModel]:
    torch.manual_seed(0)
    return {
        "segnet": build_model("segnet", NYU, width=0.125),
        "deeplabv3": build_model("deeplabv3", NYU),
    }


def _input(size: tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("arch", "width", "size"), CASES)
def test_output_shapes(
    models: dict[str, MultiTaskModel], arch: str, width: float, size: tuple[int, int]
) -> None:
    model = models[arch]
    out = model(_input(size))
    assert set(out) == set(NYU)
    for task, channels in NYU.items():
        assert out[task].shape == (2, channels, *size)
        assert torch.isfinite(out[task]).all()


@pytest.mark.parametrize("arch", ["segnet", "deeplabv3"])
def test_parameter_split_is_a_partition(models: dict[str, MultiTaskModel], arch: str) -> None:
    model = models[arch]
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in NYU]
    assert shared
    assert all(per_task)
    groups = [shared, *per_task]
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            assert not a & b
    assert set().union(*groups) == {id(p) for p in model.parameters()}
    with pytest.raises(KeyError, match="unknown task 'sky'"):
        model.task_parameters("sky")


@pytest.mark.parametrize(("arch", "size"), [("segnet", (32, 64)), ("deeplabv3", (32, 32))])
def test_forward_is_heads_on_representation(
    models: dict[str, MultiTaskModel], arch: str, size: tuple[int, int]
) -> None:
    model = models[arch].eval()
    x = _input(size)
    with torch.no_grad():
        direct = model(x)
        z = model.representation(x)
        staged = model.heads_forward(z, x.shape[-2:])
    model.train()
    for task in NYU:
        torch.testing.assert_close(direct[task], staged[task], rtol=0, atol=0)
    if arch == "deeplabv3":
        assert z.shape == (2, 2048, size[0] // 8, size[1] // 8)  # output stride 8
    else:
        assert z.shape == (2, segnet_filters(0.125)[0], *size)


@pytest.mark.parametrize(("arch", "size"), [("segnet", (32, 64)), ("deeplabv3", (32, 32))])
def test_task_gradient_reaches_only_shared_and_own_head(
    models: dict[str, MultiTaskModel], arch: str, size: tuple[int, int]
) -> None:
    model = models[arch]
    tasks = make_tasks("nyuv2", num_classes=13)
    x = _input(size)
    target = torch.randn(2, 1, *size).abs() + 0.1
    model.zero_grad(set_to_none=True)
    tasks["depth"].loss(model(x)["depth"], target).backward()

    def grad_norm(params: list[nn.Parameter]) -> float:
        assert all(p.grad is not None for p in params)
        return float(sum(p.grad.abs().sum() for p in params))

    assert grad_norm(model.shared_parameters()) > 0
    assert grad_norm(model.task_parameters("depth")) > 0
    for other in ("segmentation", "normal"):
        assert all(p.grad is None for p in model.task_parameters(other))
    model.zero_grad(set_to_none=True)


def test_single_task_model() -> None:
    torch.manual_seed(0)
    model = build_model("segnet", {"depth": 1}, width=0.125, single_task=True)
    assert model.single_task
    assert model.task_names == ("depth",)
    out = model(_input((32, 32)))
    assert set(out) == {"depth"}
    assert out["depth"].shape == (2, 1, 32, 32)
    assert count_parameters(model) == count_parameters(model.shared_parameters()) + (
        count_parameters(model.task_parameters("depth"))
    )
    with pytest.raises(ValueError, match="exactly one task"):
        build_model("segnet", {"depth": 1, "normal": 3}, width=0.125, single_task=True)


def test_segnet_bad_input_sizes(models: dict[str, MultiTaskModel]) -> None:
    model = models["segnet"]
    with pytest.raises(ValueError, match="at least 32"):
        model(_input((16, 64)))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.randn(3, 32, 32))


def test_build_errors() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("unet", NYU)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no pretrained weights exist for SegNet"):
        build_model("segnet", NYU, pretrained=True)
    with pytest.raises(ValueError, match="positive integer"):
        build_model("segnet", {"depth": 0}, width=0.125)
    with pytest.raises(ValueError, match="without '/'"):
        build_model("segnet", {"a/b": 1}, width=0.125)
    with pytest.raises(ValueError, match="tasks is empty"):
        build_model("segnet", {}, width=0.125)
    with pytest.raises(ValueError, match=r"width 1\.0"):
        build_model("deeplabv3", NYU, width=0.5, pretrained=True)


def test_segnet_matches_mtan_layout() -> None:
    # MTAN's single-task SegNet for 13 classes reports 24,981,069 parameters.
    model = build_model("segnet", {"segmentation": 13}, single_task=True)
    assert count_parameters(model) == 24_981_069
    assert segnet_filters(1.0) == (64, 128, 256, 512, 512)
    assert segnet_filters(0.125) == (8, 16, 32, 64, 64)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 13  # 13 encoder convolutions, mirrored by the decoder


def test_aspp_head_is_torchvision_deeplab_head() -> None:
    ours, theirs = aspp_head(64, 5), DeepLabHead(64, 5)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]


def test_pretrained_uses_torchvision_weights_api(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    real = torchvision.models.resnet50

    def fake_resnet50(**kwargs: object) -> torchvision.models.ResNet:
        calls.append(kwargs)
        return real(**{**kwargs, "weights": None})  # no download in tests

    monkeypatch.setattr(torchvision.models, "resnet50", fake_resnet50)
    build_model("deeplabv3", {"depth": 1}, pretrained=True)
    assert calls[0]["weights"] == torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert calls[0]["replace_stride_with_dilation"] == [False, True, True]
    build_model("deeplabv3", {"depth": 1})
    assert calls[1]["weights"] is None


def test_narrow_deeplab_for_smoke_runs() -> None:
    torch.manual_seed(0)
    model = build_model("deeplabv3", {"depth": 1}, width=0.125)
    out = model(_input((48, 64)))
    assert out["depth"].shape == (2, 1, 48, 64)


@pytest.mark.parametrize("arch", ["segnet", "deeplabv3"])
def test_seeded_construction_is_deterministic(arch: str) -> None:
    tasks = {"segmentation": 7, "depth": 1}
    width = 0.125
    states = []
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(arch, tasks, width=width).eval()  # type: ignore[arg-type]
        states.append(model.state_dict())
        with torch.no_grad():
            outputs.append(model(_input((32, 32)))["depth"])
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(124)
    other = build_model(arch, tasks, width=width).state_dict()  # type: ignore[arg-type]
    first = next(iter(other))  # the first convolution's weight
    assert first.startswith("encoder.")
    assert not torch.equal(other[first], states[0][first])


@pytest.mark.parametrize("size", [(8, 12), (7, 5)])
def test_max_unpool_matches_torch(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    a = pooled.clone().requires_grad_(True)
    b = pooled.clone().requires_grad_(True)
    ours = max_unpool(a, idx, size)
    theirs = F.max_unpool2d(b, idx, 2, 2, output_size=size)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    weight = torch.randn(ours.shape)
    (ours * weight).sum().backward()
    (theirs * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_segnet_runs_under_deterministic_algorithms() -> None:
    torch.manual_seed(0)
    model = build_model("segnet", {"depth": 1}, width=0.125)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model(_input((32, 32)))["depth"].sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segnet_training_step_is_deterministic_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    tasks = make_tasks("nyuv2", num_classes=13)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, 96, generator=gen).cuda()
    targets = {
        "segmentation": torch.randint(-1, 13, (4, 64, 96), generator=gen).cuda(),
        "depth": torch.rand(4, 1, 64, 96, generator=gen).cuda(),
        "normal": F.normalize(torch.randn(4, 3, 64, 96, generator=gen), dim=1).cuda(),
    }
    grads = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            torch.manual_seed(0)
            model = build_model("segnet", NYU, width=0.25).cuda()
            out = model(x)
            sum(t.loss(out[k], targets[k]) for k, t in tasks.items()).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
