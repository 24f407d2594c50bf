"""Losses and metrics of the tasks against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_paradigms.tasks import (
    BinaryTask,
    ConfusionMatrixMeter,
    DepthTask,
    Meter,
    NormalTask,
    SegmentationTask,
    Task,
    compute_metrics,
    make_meters,
    make_task,
    make_tasks,
    metric_directions,
    normal_angles,
)


def seg_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits ``N x C x H x W`` whose argmax is ``labels`` (``N x H x W``)."""
    return 5.0 * F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------------------------
# Segmentation

# One image 2x3; the -1 pixel is ignored (its prediction, class 0, must not count).
SEG_TARGET = torch.tensor([[[0, 0, 1], [2, -1, 1]]])
SEG_PRED = torch.tensor([[[0, 1, 1], [2, 0, 0]]])


def test_confusion_matrix_miou_pixacc_by_hand() -> None:
    meter = SegmentationTask(3).meter()
    meter.update(seg_logits(SEG_PRED, 3), SEG_TARGET)
    # (target, pred) pairs: (0,0) (0,1) (1,1) (2,2) (1,0)
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert torch.equal(meter.confusion_matrix(), expected)
    # IoU: class 0: 1/(2+2-1), class 1: 1/(2+2-1), class 2: 1/(1+1-1)
    out = meter.compute()
    assert out["miou"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert out["pixacc"] == pytest.approx(3 / 5)


def test_miou_skips_a_class_absent_from_the_split() -> None:
    # Class 3 occurs in neither target nor prediction: skipped, not NaN, not counted as 0.
    meter = SegmentationTask(4).meter()
    meter.update(seg_logits(SEG_PRED, 4), SEG_TARGET)
    out = meter.compute()
    assert out["miou"] == pytest.approx(5 / 9)
    assert not math.isnan(out["miou"])
    # A class only predicted (never in the target) counts with IoU 0.
    meter = SegmentationTask(3).meter()
    meter.update(seg_logits(torch.tensor([[[0, 0, 0, 1]]]), 3), torch.tensor([[[0, 0, 0, 0]]]))
    assert meter.compute()["miou"] == pytest.approx((3 / 4 + 0) / 2)


def test_ignored_pixels_affect_neither_metrics_nor_loss() -> None:
    task = SegmentationTask(3)
    logits = torch.randn(1, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    changed = logits.clone()
    changed[0, :, 1, 1] = torch.tensor([-9.0, 9.0, 3.0])  # the ignored pixel
    m1, m2 = task.meter(), task.meter()
    m1.update(logits, SEG_TARGET)
    m2.update(changed, SEG_TARGET)
    assert m1.compute() == m2.compute()
    assert task.loss(logits, SEG_TARGET) == task.loss(changed, SEG_TARGET)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours, expected = task.loss(a, SEG_TARGET), F.cross_entropy(b, SEG_TARGET, ignore_index=-1)
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(a.grad, b.grad)
    # A batch of ignored pixels only: loss 0 (not NaN) with zero gradient.
    x = logits.clone().requires_grad_(True)
    loss = task.loss(x, torch.full((1, 2, 3), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad is not None
    assert not x.grad.any()


def test_segmentation_target_validation() -> None:
    task = SegmentationTask(3)
    meter = task.meter()
    meter.update(seg_logits(SEG_PRED, 3), torch.tensor([[[0, 0, 1], [2, 255, 1]]]))
    with pytest.raises(ValueError, match="1 target pixels are outside"):
        meter.compute()
    with pytest.raises(ValueError, match="does not match"):
        meter.update(seg_logits(SEG_PRED, 3), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        task.loss(torch.zeros(1, 4, 2, 3), SEG_TARGET)
    # N x 1 x H x W and float label maps are accepted.
    meter = task.meter()
    meter.update(seg_logits(SEG_PRED, 3), SEG_TARGET.unsqueeze(1).float())
    assert meter.compute()["pixacc"] == pytest.approx(3 / 5)


# ---------------------------------------------------------------------------------------------
# Depth

DEPTH_PRED = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
DEPTH_TARGET = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])  # pixel (0, 1) is invalid


def test_depth_metrics_and_loss_by_hand() -> None:
    task = DepthTask()
    meter = task.meter()
    meter.update(DEPTH_PRED, DEPTH_TARGET)
    out = meter.compute()
    # valid pairs (p, g): (1, 2), (3, 1), (4, 4); |p - g| = 1, 2, 0; |p - g|/g = 0.5, 2, 0
    assert out["abs_err"] == pytest.approx(1.0)
    assert out["rel_err"] == pytest.approx(2.5 / 3)
    assert task.loss(DEPTH_PRED, DEPTH_TARGET).item() == pytest.approx(1.0)
    # N x H x W targets are accepted
    assert task.loss(DEPTH_PRED, DEPTH_TARGET[:, 0]).item() == pytest.approx(1.0)


def test_depth_invalid_pixel_changes_nothing() -> None:
    task = DepthTask()
    changed = DEPTH_PRED.clone()
    changed[0, 0, 0, 1] = 1e6
    assert task.loss(changed, DEPTH_TARGET) == task.loss(DEPTH_PRED, DEPTH_TARGET)
    m1, m2 = task.meter(), task.meter()
    m1.update(DEPTH_PRED, DEPTH_TARGET)
    m2.update(changed, DEPTH_TARGET)
    assert m1.compute() == m2.compute()
    x = DEPTH_PRED.clone().requires_grad_(True)
    task.loss(x, DEPTH_TARGET).backward()
    assert x.grad is not None
    assert x.grad[0, 0, 0, 1] == 0
    assert x.grad[0, 0, 0, 0] != 0
    assert x.grad[0, 0, 1, 0] != 0


# ---------------------------------------------------------------------------------------------
# Normals


def _normal_case() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Six pixels in a 2x3 image: angles 0, 20, 45, 90, 180 degrees and one invalid pixel."""
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    pred = [(2, 0, 0), (c, s, 0), (1, 1, 0), (0, 0, 3), (-1, 0, 0), (1, 2, 3)]
    target = [(1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0)]

    def image(vectors: list[tuple[float, float, float]]) -> torch.Tensor:
        return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 2, 3)

    return image(pred), image(target), [0.0, 20.0, 45.0, 90.0, 180.0]


def test_normal_angles_for_known_vectors() -> None:
    pred, target, angles = _normal_case()
    angle, valid = normal_angles(pred, target)
    assert valid.reshape(-1).tolist() == [True] * 5 + [False]
    torch.testing.assert_close(
        angle.reshape(-1)[:5], torch.tensor(angles, dtype=torch.float64), rtol=0, atol=1e-4
    )


def test_normal_metrics_and_loss_by_hand() -> None:
    pred, target, angles = _normal_case()
    task = NormalTask()
    meter = task.meter()
    meter.update(pred, target)
    out = meter.compute()
    assert out["mean"] == pytest.approx(sum(angles) / 5, abs=1e-4)
    assert out["median"] == pytest.approx(45.0, abs=task.bin_width_deg)
    assert out["within_11.25"] == pytest.approx(1 / 5)
    assert out["within_22.5"] == pytest.approx(2 / 5)
    assert out["within_30"] == pytest.approx(2 / 5)
    expected_loss = sum(1 - math.cos(math.radians(a)) for a in angles) / 5
    assert task.loss(pred, target).item() == pytest.approx(expected_loss, abs=1e-6)
    # the invalid pixel's prediction changes nothing
    changed = pred.clone()
    changed[0, :, 1, 2] = torch.tensor([-5.0, 0.1, 0.2])
    assert task.loss(changed, target) == task.loss(pred, target)
    m2 = task.meter()
    m2.update(changed, target)
    assert m2.compute() == out


def test_normal_median_from_histogram_matches_torch_median() -> None:
    gen = torch.Generator().manual_seed(0)
    meter = NormalTask().meter()
    all_angles = []
    for batch in range(3):  # an odd and then an even total count of valid pixels
        pred = torch.randn(2, 3, 7, 5, generator=gen)
        target = F.normalize(pred + 0.6 * torch.randn(2, 3, 7, 5, generator=gen), dim=1)
        target[:, :, 0, batch] = 0  # invalid pixels
        meter.update(pred, target)
        angle, valid = normal_angles(pred, target)
        all_angles.append(angle[valid])
        exact = torch.median(torch.cat(all_angles)).item()
        assert meter.compute()["median"] == pytest.approx(exact, abs=meter.bin_width_deg)
    assert meter.compute()["mean"] == pytest.approx(torch.cat(all_angles).mean().item())
    # a coarse histogram is within one bin as well
    coarse = NormalTask(bin_width_deg=1.0).meter()
    coarse.update(pred, target)
    angle, valid = normal_angles(pred, target)
    assert coarse.compute()["median"] == pytest.approx(torch.median(angle[valid]).item(), abs=1.0)


# ---------------------------------------------------------------------------------------------
# Binary attributes


def test_binary_metrics_by_hand() -> None:
    task = make_task("binary", name="Smiling")
    meter = task.meter()
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0], [1.0]])
    target = torch.tensor([1, 1, 0, 0, 1])
    meter.update(logits, target)
    # predictions 1 0 1 0 1: TP 2, FN 1, FP 1, TN 1
    out = meter.compute()
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    torch.testing.assert_close(task.loss(logits, target), expected)
    # no positive target nor prediction: F1 is 0 by convention, accuracy 1
    meter = task.meter()
    meter.update(torch.tensor([-1.0, -2.0]), torch.tensor([0.0, 0.0]))
    assert meter.compute() == {"accuracy": 1.0, "f1": 0.0}


# ---------------------------------------------------------------------------------------------
# Properties shared by all meters


def _batches(task: Task, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for n in (1, 3, 2):
        if isinstance(task, SegmentationTask):
            pred = torch.randn(n, 4, 6, 5, generator=gen)
            target = torch.randint(-1, 4, (n, 6, 5), generator=gen)
        elif isinstance(task, DepthTask):
            pred = torch.randn(n, 1, 6, 5, generator=gen)
            target = torch.rand(n, 1, 6, 5, generator=gen) * (torch.rand(n, 1, 6, 5) > 0.3)
        elif isinstance(task, NormalTask):
            pred = torch.randn(n, 3, 6, 5, generator=gen)
            target = F.normalize(torch.randn(n, 3, 6, 5, generator=gen), dim=1)
            target = target * (torch.rand(n, 1, 6, 5, generator=gen) > 0.3)
        else:
            pred = torch.randn(n, 1, generator=gen)
            target = (torch.rand(n, generator=gen) > 0.5).float()
        out.append((pred, target))
    return out


ALL_TASKS = [SegmentationTask(4), DepthTask(), NormalTask(), BinaryTask()]


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.kind)
def test_accumulation_equals_one_update_on_the_concatenation(task: Task) -> None:
    batches = _batches(task, torch.Generator().manual_seed(1))
    several, once = task.meter(), task.meter()
    for pred, target in batches:
        several.update(pred, target)
    once.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    a, b = several.compute(), once.compute()
    assert a.keys() == b.keys() == {m.name for m in task.metrics}
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12)
    several.reset()
    with pytest.raises(ValueError, match="nothing to compute"):
        several.compute()


def _forbid(*args: object, **kwargs: object) -> None:
    raise AssertionError("host synchronisation in Meter.update")


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.kind)
def test_meter_update_does_not_sync_with_the_host(
    task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _batches(task, torch.Generator().manual_seed(2))
    meter = task.meter()
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, _forbid)
    for pred, target in batches:
        meter.update(pred, target)
    monkeypatch.undo()
    assert set(meter.compute()) == {m.name for m in task.metrics}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.kind)
def test_meter_update_does_not_sync_on_cuda(task: Task) -> None:
    batches = [(p.cuda(), t.cuda()) for p, t in _batches(task, torch.Generator().manual_seed(3))]
    meter, reference = task.meter("cuda"), task.meter("cpu")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for pred, target in batches:
            meter.update(pred, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for pred, target in batches:
        reference.update(pred.cpu(), target.cpu())
    got, want = meter.compute(), reference.compute()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9)


def test_meter_update_records_no_autograd_graph() -> None:
    pred = torch.randn(1, 1, 2, 2, requires_grad=True)
    meter = DepthTask().meter()
    meter.update(pred, torch.ones(1, 1, 2, 2))
    assert not meter._abs.requires_grad


# ---------------------------------------------------------------------------------------------
# Factories and metric keys


def test_make_tasks_and_directions() -> None:
    nyu = make_tasks("nyuv2", num_classes=13)
    assert list(nyu) == ["segmentation", "depth", "normal"]
    assert nyu["segmentation"].out_channels == 13
    assert [t.out_channels for t in nyu.values()] == [13, 1, 3]
    assert metric_directions(nyu) == {
        "segmentation/miou": True,
        "segmentation/pixacc": True,
        "depth/abs_err": False,
        "depth/rel_err": False,
        "normal/mean": False,
        "normal/median": False,
        "normal/within_11.25": True,
        "normal/within_22.5": True,
        "normal/within_30": True,
    }
    cs = make_tasks("cityscapes", num_classes=7)
    assert list(cs) == ["segmentation", "depth"]
    assert metric_directions(cs.values()) == {
        "segmentation/miou": True,
        "segmentation/pixacc": True,
        "depth/abs_err": False,
        "depth/rel_err": False,
    }
    celeb = [make_task("binary", name=f"attr{i}") for i in range(3)]
    assert metric_directions(celeb)["attr2/f1"] is True


def test_compute_metrics_flattens_keys() -> None:
    tasks = make_tasks("cityscapes", num_classes=3)
    meters: dict[str, Meter] = make_meters(tasks)
    assert isinstance(meters["segmentation"], ConfusionMatrixMeter)
    meters["segmentation"].update(seg_logits(SEG_PRED, 3), SEG_TARGET)
    meters["depth"].update(DEPTH_PRED, DEPTH_TARGET)
    out = compute_metrics(meters)
    assert set(out) == set(metric_directions(tasks))
    assert out["depth/abs_err"] == pytest.approx(1.0)


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match="needs num_classes"):
        make_task("segmentation")
    with pytest.raises(ValueError, match="segmentation only"):
        make_task("depth", num_classes=3)
    with pytest.raises(ValueError, match="unknown task kind"):
        make_task("edges")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown dataset"):
        make_tasks("kitti", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no '/'"):
        make_task("depth", name="a/b")
    with pytest.raises(ValueError, match="differs from the task's name"):
        metric_directions({"seg": SegmentationTask(3)})
