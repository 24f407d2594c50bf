"""ResNet-18 + linear heads: shapes, the shared/task split, uint8 input, cached ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_paradigms.models import build_model
from mtl_paradigms.models.resnet import RESNET18_FEATURES


def test_resnet18_outputs_one_logit_per_attribute() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", {"Smiling": 1, "Male": 1, "Eyeglasses": 1})
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = model(x)
    assert set(out) == {"Smiling", "Male", "Eyeglasses"}
    assert all(v.shape == (4, 1) for v in out.values())
    z = model.representation(x)
    assert z.shape == (4, RESNET18_FEATURES)
    # uint8 input is the same as the float image in [0, 1]
    model.eval()
    torch.testing.assert_close(model(x)["Male"], model(x.float() / 255)["Male"])
    head = model.task_parameters("Male")
    assert [tuple(p.shape) for p in head] == [(1, RESNET18_FEATURES), (1,)]
    shared = {id(p) for p in model.shared_parameters()}
    assert not shared & {id(p) for t in model.task_names for p in model.task_parameters(t)}


def test_resnet18_rejects_width() -> None:
    with pytest.raises(ValueError, match="no width variants"):
        build_model("resnet18", {"a": 1}, width=0.5)


def test_pretrained_weights_come_from_the_torch_home_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's weight mechanism finds the file the workflow downloaded; no network."""
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = build_model("resnet18", {"a": 1}, pretrained=True)
    torch.testing.assert_close(model.encoder.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.encoder.layer4[1].bn2.bias, reference.layer4[1].bn2.bias)


def test_resnet18_matches_torchvision_module_for_module() -> None:
    import torchvision

    ours = build_model("resnet18", {"a": 1}).encoder
    reference = torchvision.models.resnet18()
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k in theirs})
    ours.eval()
    reference.eval()
    x = torch.rand(2, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    mean, std = ours.mean, ours.std
    torch.testing.assert_close(ours(x), reference((x - mean) / std))
