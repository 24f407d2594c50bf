"""Batched random scale-crop + flip (MTAN / LibMTL augmentation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtl_paradigms.data import augment_batch, normalize_normals

B, H, W = 6, 20, 30


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int = 0, holes: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random images and targets with invalid pixels at the same places in every target."""
    g = _generator(seed)
    images = torch.rand(B, 3, H, W, generator=g)
    invalid = torch.rand(B, H, W, generator=g) < holes
    label = torch.randint(0, 13, (B, H, W), generator=g).masked_fill(invalid, -1)
    depth = (torch.rand(B, 1, H, W, generator=g) + 0.5).masked_fill(invalid[:, None], 0.0)
    normal = normalize_normals(torch.randn(B, 3, H, W, generator=g))
    normal = normal.masked_fill(invalid[:, None], 0.0)
    return images, {"segmentation": label, "depth": depth, "normal": normal}


def test_identity_when_switched_off() -> None:
    images, targets = _batch()
    out, out_t = augment_batch(images, targets, _generator(), scales=(1.0,), flip=False)
    assert torch.equal(out, images)
    for key, value in targets.items():
        assert torch.equal(out_t[key], value)
        assert out_t[key].dtype == value.dtype


def test_depth_is_divided_by_the_scale() -> None:
    images, targets = _batch(holes=0.0)
    targets["depth"] = torch.full((B, 1, H, W), 3.0)
    for scale in (1.2, 1.5, 2.0):
        _, out = augment_batch(images, targets, _generator(1), scales=(scale,), flip=True)
        torch.testing.assert_close(out["depth"], torch.full_like(out["depth"], 3.0 / scale))


def test_flip_mirrors_and_negates_normal_x() -> None:
    images, targets = _batch()
    out, out_t = augment_batch(images, targets, _generator(2), scales=(1.0,), flip=True)
    flipped = [torch.equal(out[b], images[b].flip(-1)) for b in range(B)]
    kept = [torch.equal(out[b], images[b]) for b in range(B)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)), "each sample flipped or not"
    assert any(flipped)
    assert any(kept)
    normal, label, depth = targets["normal"], targets["segmentation"], targets["depth"]
    for b in range(B):
        if flipped[b]:
            expected = normal[b].flip(-1) * torch.tensor([-1.0, 1.0, 1.0])[:, None, None]
            assert torch.equal(out_t["normal"][b], expected)
            assert torch.equal(out_t["segmentation"][b], label[b].flip(-1))
            assert torch.equal(out_t["depth"][b], depth[b].flip(-1))
        else:
            assert torch.equal(out_t["normal"][b], normal[b])


def test_crop_matches_torch_interpolate() -> None:
    """Each sample equals MTAN's crop-and-interpolate for some integer crop offset."""
    images, targets = _batch()
    scale = 1.5
    out, out_t = augment_batch(images, targets, _generator(3), scales=(scale,), flip=False)
    h, w = int(H / scale), int(W / scale)
    for b in range(B):
        matches = []
        for i in range(H - h + 1):
            for j in range(W - w + 1):
                crop = images[b : b + 1, :, i : i + h, j : j + w]
                ref = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=True)
                if torch.allclose(ref[0], out[b], atol=1e-5):
                    matches.append((i, j))
        assert len(matches) == 1
        i, j = matches[0]
        depth = targets["depth"][b : b + 1, :, i : i + h, j : j + w]
        ref_depth = F.interpolate(depth, size=(H, W), mode="nearest")[0] / scale
        torch.testing.assert_close(out_t["depth"][b], ref_depth)
        label = targets["segmentation"][b : b + 1, None, i : i + h, j : j + w].float()
        ref_label = F.interpolate(label, size=(H, W), mode="nearest")[0, 0].long()
        assert torch.equal(out_t["segmentation"][b], ref_label)


def test_invalid_pixels_stay_invalid() -> None:
    images, targets = _batch(holes=0.3)
    _, out = augment_batch(images, targets, _generator(4))
    invalid = out["segmentation"] == -1
    assert invalid.any()
    assert (~invalid).any()
    assert torch.equal(out["depth"][:, 0] == 0, invalid)
    assert torch.equal((out["normal"] == 0).all(dim=1), invalid)
    # Targets are copied, never blended: valid normals stay unit vectors, labels stay in range.
    norm = out["normal"].norm(dim=1)[~invalid]
    torch.testing.assert_close(norm, torch.ones_like(norm))
    assert set(out["segmentation"].unique().tolist()) <= set(
        targets["segmentation"].unique().tolist()
    )
    # Each valid depth is an input depth divided by one of the scales.
    values = targets["depth"][targets["depth"] > 0]
    candidates = torch.cat([values / s for s in (1.0, 1.2, 1.5)])
    got = out["depth"][out["depth"] > 0]
    assert torch.isclose(got[:, None], candidates[None, :], rtol=1e-6, atol=0).any(dim=1).all()


def test_deterministic_given_the_generator() -> None:
    images, targets = _batch()
    first = augment_batch(images, targets, _generator(5))
    second = augment_batch(images, targets, _generator(5))
    other = augment_batch(images, targets, _generator(6))
    assert torch.equal(first[0], second[0])
    for key in targets:
        assert torch.equal(first[1][key], second[1][key])
    assert not torch.equal(first[0], other[0])


def test_shapes_dtypes_and_other_targets() -> None:
    images, targets = _batch()
    targets["edges"] = torch.rand(B, 2, H, W)
    out, out_t = augment_batch(images.double(), targets, _generator(7))
    assert out.shape == (B, 3, H, W)
    assert out.dtype == torch.float64
    for key, value in targets.items():
        assert out_t[key].shape == value.shape
        assert out_t[key].dtype == value.dtype
    empty, empty_t = augment_batch(images[:0], {k: v[:0] for k, v in targets.items()}, _generator())
    assert empty.shape[0] == 0
    assert empty_t["depth"].shape[0] == 0


def test_rejects_bad_inputs() -> None:
    images, targets = _batch()
    with pytest.raises(ValueError, match="scales"):
        augment_batch(images, targets, _generator(), scales=(0.5,))
    with pytest.raises(ValueError, match="scales"):
        augment_batch(images, targets, _generator(), scales=())
    with pytest.raises(ValueError, match="depth"):
        augment_batch(images, {"depth": targets["depth"][:, :, :-1]}, _generator())
    with pytest.raises(ValueError, match="normal"):
        augment_batch(images, {"normal": targets["normal"][:, :2]}, _generator())


def test_normalize_normals_keeps_zero_vectors() -> None:
    normals = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]).T[None, :, :, None]
    out = normalize_normals(normals)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.6, 0.0, 0.8]))
    assert torch.equal(out[0, :, 1, 0], torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_result_on_cuda_with_a_cpu_generator() -> None:
    images, targets = _batch()
    cpu = augment_batch(images, targets, _generator(8))
    gpu = augment_batch(images.cuda(), {k: v.cuda() for k, v in targets.items()}, _generator(8))
    torch.testing.assert_close(gpu[0].cpu(), cpu[0])
    for key in targets:
        torch.testing.assert_close(gpu[1][key].cpu(), cpu[1][key])
