"""The trainer's speed switches (``fused_optimizer``, ``cudnn_benchmark``, ``compile``): the same
update as the default path up to rounding, clear errors where a switch cannot apply."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtl_paradigms.data.synthetic.scenes import SyntheticSettings, write_synthetic_mtan
from mtl_paradigms.methods import make_method
from mtl_paradigms.models import build_model
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import make_tasks
from mtl_paradigms.train import (
    CHECKPOINT,
    TrainSettings,
    batched_jacobian,
    compile_model,
    make_optimizer,
    speed_flags,
    train,
    training_step,
)


def _batch(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, 32, 32, generator=g)
    targets = {
        "segmentation": torch.randint(-1, 13, (4, 32, 32), generator=g),
        "depth": torch.rand(4, 1, 32, 32, generator=g) + 0.1,
        "normal": torch.nn.functional.normalize(torch.randn(4, 3, 32, 32, generator=g), dim=1),
    }
    return images, targets


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    tasks = make_tasks("nyuv2", 13)
    return build_model("segnet", {k: t.out_channels for k, t in tasks.items()}, width=0.125)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_optimizer_takes_the_same_step(optimizer: str) -> None:
    # Two steps from the same gradients (the second with momentum / Adam moments): the same
    # updates up to rounding. (Over more steps the runs drift apart, as any change of rounding
    # makes them: Adam turns the rounding noise of near-zero gradients into steps of size lr.)
    lr = 1e-3
    settings = TrainSettings(optimizer=optimizer, lr=lr)  # type: ignore[arg-type]
    start = _model()
    grads = [[torch.randn_like(p) for p in start.parameters()] for _ in range(2)]
    params = []
    for fused in (False, True):
        model = copy.deepcopy(start)
        opt = make_optimizer(replace(settings, fused_optimizer=fused), list(model.parameters()))
        assert opt.defaults["fused"] is (True if fused else None)
        for step_grads in grads:
            for p, g in zip(model.parameters(), step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    origin = torch.cat([p.detach().reshape(-1) for p in start.parameters()])
    moved = params[0] - origin
    assert moved.abs().max() > lr / 2  # the steps were taken
    torch.testing.assert_close(params[1] - origin, moved, rtol=1e-4, atol=1e-6 * lr)


def test_signsgd_has_no_fused_kernel_and_takes_its_own_step_with_fused_optimizer() -> None:
    # One grid-wide fused_optimizer must not break the grid's signSGD runs.
    steps = []
    for fused in (False, True):
        settings = TrainSettings(optimizer="signsgd", fused_optimizer=fused, lr=0.1)
        param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        opt = make_optimizer(settings, [param])
        assert type(opt).__name__ == "SignSGD"
        param.grad = torch.tensor([0.5, -0.25, 0.0])
        opt.step()
        steps.append(param.detach().clone())
    torch.testing.assert_close(steps[1], steps[0])
    assert not torch.equal(steps[0], torch.tensor([1.0, -2.0, 3.0]))


def test_switches_that_cannot_apply_are_refused_by_name() -> None:
    with pytest.raises(SettingsError, match=r"compile_mode.*compile: true"):
        TrainSettings(compile_mode="reduce-overhead")
    with pytest.raises(SettingsError, match=r"compile.*batched"):
        TrainSettings(compile=True, task_jacobian="batched")


def test_auto_lambda_runs_eagerly_under_compile_so_one_setting_serves_a_grid() -> None:
    # Its meta step evaluates substituted parameters, which a compiled model would recompile
    # at every step.
    cuda = torch.device("cuda")
    assert TrainSettings(compile=True).compiled
    assert not TrainSettings(compile=True, method="auto_lambda").compiled
    assert not TrainSettings(method="pcgrad").compiled
    assert batched_jacobian(TrainSettings(compile=True, method="auto_lambda"), cuda)


def test_compile_with_callbacks_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    class Observer:  # a callback (gradient statistics hook the encoder's layers)
        pass

    with pytest.raises(SettingsError, match=r"compile.*callbacks"):
        train(TrainSettings(compile=True), tmp_path / "run", callbacks=[Observer()])  # type: ignore[list-item]
    assert not (tmp_path / "run").exists()  # nothing written


def test_compile_takes_the_per_task_loop_and_cudnn_benchmark_is_restored() -> None:
    cuda = torch.device("cuda")
    assert batched_jacobian(TrainSettings(), cuda)
    assert not batched_jacobian(TrainSettings(compile=True), cuda)
    assert not batched_jacobian(TrainSettings(), torch.device("cpu"))
    before = torch.backends.cudnn.benchmark
    with speed_flags(TrainSettings(cudnn_benchmark=True)):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.slow
def test_compiled_model_gives_the_eager_update_and_trains(tmp_path: Path) -> None:
    # One update of EW (model(x)) and of PCGrad (representation + heads, per-task gradients
    # with retain_graph through the compiled backward): the same losses and gradients as eager.
    tasks = make_tasks("nyuv2", 13)
    autocast = torch.autocast("cpu", enabled=False)
    images, targets = _batch(0)
    eager = _model()
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    models = (eager, compiled)
    with speed_flags(TrainSettings(compile=True)):
        for name in ("ew", "pcgrad"):  # no optimizer step: both start from the same weights
            outs = []
            for model in models:
                model.zero_grad(set_to_none=True)
                method = make_method(name, {"seed": 0} if name == "pcgrad" else {})
                method.bind(len(tasks), torch.device("cpu"))
                outs.append(training_step(model, tasks, method, images, targets, autocast))
            torch.testing.assert_close(outs[1].losses, outs[0].losses, rtol=1e-5, atol=1e-6)
            assert all(p.grad is not None for p in compiled.parameters())
            grads = [torch.cat([p.grad.reshape(-1) for p in m.parameters()]) for m in models]
            # Relative to the largest gradient: the biases of convolutions before BatchNorm
            # have zero gradient up to rounding, which differs between the two.
            scale = grads[0].abs().max().item()
            # (float32; the compiled kernels fuse and reorder the BatchNorm reductions, which
            # moves the gradients by ~1e-4 of their norm.)
            torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=5e-4 * scale)
            assert (grads[1] - grads[0]).norm() <= 5e-4 * grads[0].norm()
    # A compiled run trains, checkpoints under the eager parameter names and restores the flag.
    data = tmp_path / "nyuv2"
    write_synthetic_mtan(
        SyntheticSettings(dataset="nyuv2", num_train=16, num_val=8, height=32, width=32), data
    )
    run = TrainSettings(
        dataset="nyuv2", data_dir=str(data), val_size=8, arch="segnet", width=0.125, epochs=1,
        batch_size=8, eval_batch_size=8, device="cpu", selection="val_loss", compile=True,
    )  # fmt: skip
    # no silent fallback to eager: 3 heads, training and evaluation mode, within the limit
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        metrics = train(run, tmp_path / "run", progress=False)
    assert metrics["diverged"] is False
    assert torch._dynamo.config.recompile_limit == 8  # restored after the run
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["model"]
    assert set(state) == set(_model().state_dict())
