"""GradNorm, FAMO, Auto-Lambda, IMTL and MGDA-UB: their defining properties on sampled inputs."""

from __future__ import annotations

import pytest
import torch

from mtl_paradigms.methods import FAMO, IMTL, MGDAUB, AutoLambda, GradNorm, make_method

F64 = torch.float64


@pytest.mark.parametrize("seed", range(5))
def test_gradnorm_weights_are_renormalised_and_pushed_towards_the_target(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_tasks = 3
    method = GradNorm(alpha=1.5)
    (w,) = method.bind(num_tasks)
    with torch.no_grad():
        w.copy_(torch.rand(num_tasks, generator=gen) * 3 + 0.1)  # not summing to T
    grads = torch.randn(num_tasks, 50, generator=gen)
    method.observe(torch.tensor([1.0, 2.0, 3.0]))  # first call: the initial losses
    weights = method.task_weights(grads)
    assert weights.sum().item() == pytest.approx(1.0)  # w sums to T, the weights are w / T
    assert w.sum().item() == pytest.approx(num_tasks)
    # Equal training rates: the target is the mean weighted norm; a task above it is pushed down.
    weighted = w.detach() * grads.norm(dim=-1)
    expected = torch.sign(weighted - weighted.mean()) * grads.norm(dim=-1)
    torch.testing.assert_close(w.grad, expected)


def test_gradnorm_favours_the_task_that_trains_slower() -> None:
    method = GradNorm(alpha=1.0)
    (w,) = method.bind(2)
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # equal norms
    method.observe(torch.tensor([1.0, 1.0]))
    method.task_weights(grads)
    method.observe(torch.tensor([0.5, 1.0]))  # task 0 trains faster
    method.task_weights(grads)
    assert w.grad[0] > 0 > w.grad[1]  # gradient descent lowers task 0's weight, raises task 1's


@pytest.mark.parametrize("seed", range(5))
def test_famo_weights_lie_on_the_simplex_and_follow_the_loss_decrease(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    method = FAMO(gamma=0.0, logit_lr=0.1)
    method.bind(4)
    losses = torch.rand(4, generator=gen) + 0.1
    weights = method.weights(losses)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (weights > 0).all()
    # Task 2's loss did not fall at all, the others halved: task 2's logit must rise.
    after = losses * torch.tensor([0.5, 0.5, 1.0, 0.5])
    method.after_step(after)
    z = torch.softmax(method.state_dict()["logits"], dim=-1)
    assert z.argmax().item() == 2


def test_famo_direction_is_invariant_to_constant_loss_scales_up_to_its_length() -> None:
    # Scaling L_t by k_t scales grad L_t by k_t; FAMO's factors w_t k_t must keep their ratios.
    method = FAMO()
    method.bind(3)
    losses = torch.tensor([0.3, 2.0, 7.0], dtype=F64)
    k = torch.tensor([10.0, 0.1, 3.0], dtype=F64)
    ratio = method.weights(losses * k) * k / method.weights(losses)
    torch.testing.assert_close(ratio, ratio[0].expand(3), rtol=1e-5, atol=0)


def test_auto_lambda_meta_gradient_is_exact_for_one_virtual_step() -> None:
    # A linear two-task model: the meta gradient of the validation loss through one virtual SGD
    # step, computed by autograd end to end, must equal the method's closed form.
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=gen, dtype=F64)
    x_train, x_val = (
        torch.randn(2, 5, generator=gen, dtype=F64),
        torch.randn(2, 5, generator=gen, dtype=F64),
    )
    y_train, y_val = (
        torch.randn(2, generator=gen, dtype=F64),
        torch.randn(2, generator=gen, dtype=F64),
    )

    def loss_fn(params, x, y):
        pred = x @ params["theta"]
        return (pred - y) ** 2  # task t is the t-th row

    lr, lam0 = 0.1, torch.tensor([1.0, 0.5], dtype=F64)
    method = AutoLambda(meta_lr=1.0, init=1.0)
    method.bind(2)
    with torch.no_grad():
        method._lam.copy_(lam0)
    captured = {}
    method._optimizer.step = lambda: captured.setdefault("grad", method._lam.grad.clone())

    method.meta_step(loss_fn, {"theta": theta}, lr, (x_train, y_train), (x_val, y_val))

    lam = lam0.clone().requires_grad_(True)
    th = theta.clone().requires_grad_(True)
    train_losses = loss_fn({"theta": th}, x_train, y_train)
    g = torch.stack(
        [torch.autograd.grad(train_losses[t], th, retain_graph=True)[0] for t in range(2)]
    )
    virtual = theta - lr * (lam / 2) @ g
    val = loss_fn({"theta": virtual}, x_val, y_val).mean()
    (expected,) = torch.autograd.grad(val, lam)
    torch.testing.assert_close(captured["grad"], expected.float(), rtol=1e-5, atol=1e-7)


def test_auto_lambda_keeps_weights_non_negative_and_skips_between_updates() -> None:
    method = AutoLambda(meta_lr=10.0, update_every=2)
    method.bind(2)
    calls = []

    def loss_fn(params, x, y):
        calls.append(1)
        return torch.stack([(params["p"] * 5).sum(), -(params["p"]).sum()])

    batch = (torch.zeros(1), {})
    for _ in range(3):
        method.meta_step(loss_fn, {"p": torch.ones(2)}, 1.0, batch, batch)
    assert len(calls) == 4  # steps 1 and 3 update (two loss evaluations each), step 2 skips
    assert (method.state_dict()["lambda"] >= 0).all()


def test_imtl_scaled_losses_make_the_shared_gradients_scale_invariant() -> None:
    method = IMTL()
    (s,) = method.bind(2)
    theta = torch.tensor([0.7, -1.3], requires_grad=True)
    scales = torch.tensor([1.0, 25.0])

    def grads(k: torch.Tensor) -> torch.Tensor:
        losses = k * torch.stack([(theta**2).sum(), (theta - 1).pow(2).sum()])
        with torch.no_grad():
            s.copy_(-losses.detach().log())  # the optimum of the scale parameters
        out = method.transform_losses(losses)
        return torch.stack(
            [torch.autograd.grad(out[t], theta, retain_graph=True)[0] for t in range(2)]
        )

    torch.testing.assert_close(grads(torch.ones(2)), grads(scales))
    # At s = -log L the gradient of the scaled loss with respect to s vanishes.
    losses = torch.tensor([0.5, 4.0])
    with torch.no_grad():
        s.copy_(-losses.log())
    (ds,) = torch.autograd.grad(method.transform_losses(losses).sum(), s)
    torch.testing.assert_close(ds, torch.zeros(2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_ub_weights_lie_on_the_simplex_and_match_mgda_on_normalised_gradients(
    normalization: str,
) -> None:
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(3, 20, generator=gen, dtype=F64)
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=F64)
    method = MGDAUB(normalization=normalization)
    method.observe(losses)
    w = method.task_weights(grads)
    assert w.sum().item() == pytest.approx(1.0)
    assert (w >= -1e-12).all()
    factor = {
        "none": torch.ones(3, dtype=F64),
        "l2": grads.norm(dim=-1),
        "loss": losses,
        "loss+": losses * grads.norm(dim=-1),
    }[normalization]
    expected = make_method("mgda").task_weights(grads / factor[:, None])
    torch.testing.assert_close(w, expected)


def test_invalid_hyperparameters_name_the_method() -> None:
    with pytest.raises(ValueError, match="gradnorm: alpha"):
        GradNorm(alpha=-1)
    with pytest.raises(ValueError, match="famo: logit_lr"):
        FAMO(logit_lr=0)
    with pytest.raises(ValueError, match="auto_lambda: update_every"):
        AutoLambda(update_every=0)
    with pytest.raises(ValueError, match="mgda_ub: normalization"):
        MGDAUB(normalization="max")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="bind"):
        IMTL().transform_losses(torch.ones(2))


def test_rotograd_rescales_every_task_to_one_magnitude_and_rotates_towards_consensus() -> None:
    from mtl_paradigms.methods import RotoGrad
    from mtl_paradigms.models import build_model

    torch.manual_seed(0)
    model = build_model("segnet", {"a": 2, "b": 1}, width=0.125)
    method = RotoGrad(rotation_lr=0.05)
    method.attach(model)
    assert set(model.task_transforms) == {"a", "b"}
    channels = model.encoder.out_channels
    z_shape = torch.Size([2, channels, 4, 4])
    method.observe_representation(torch.zeros(z_shape))
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(2, z_shape.numel(), generator=gen) * torch.tensor([[1.0], [10.0]])
    direction, weights = method.aggregate(grads)
    scaled = weights[:, None] * grads * 2  # each task's rescaled gradient, before the mean
    norms = scaled.norm(dim=-1)
    torch.testing.assert_close(norms[0], norms[1])  # first step: alpha = 1/2, equal magnitudes
    torch.testing.assert_close(direction, scaled.mean(dim=0))
    rotation = model.task_transforms["a"].matrix().detach()
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(channels), atol=1e-5, rtol=0)
    assert not torch.allclose(rotation, torch.eye(channels))  # one step moved it

    def alignment() -> float:
        total = 0.0
        for t, name in enumerate(("a", "b")):
            r = model.task_transforms[name].matrix().detach()
            u = grads[t].view(z_shape)
            back = torch.einsum("ji,bj...->bi...", r, torch.einsum("ij,bj...->bi...", r0[t], u))
            total += (
                torch.nn.functional.cosine_similarity(
                    back.flatten(1), target.view(z_shape).flatten(1), dim=1
                )
                .mean()
                .item()
            )
        return total

    # With g_t and the target held fixed, repeated rotation steps raise the alignment.
    r0 = [model.task_transforms[n].matrix().detach() for n in ("a", "b")]
    target = direction.detach()
    before = alignment()
    for _ in range(20):
        method._rotate(torch.stack([
            torch.einsum("ji,bj...->bi...", model.task_transforms[n].matrix().detach(),
                         torch.einsum("ij,bj...->bi...", r0[t], grads[t].view(z_shape))).flatten()
            for t, n in enumerate(("a", "b"))
        ]), target)  # fmt: skip
    assert alignment() > before
