"""Updaters: strategies (AdaTask, MTL-IUS/IO, random task grouping), path length, weights."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_paradigms.methods import METHODS, Method, Strategy, make_method
from mtl_paradigms.methods.strategies import task_groups
from mtl_paradigms.models import build_model
from mtl_paradigms.tasks import make_tasks
from mtl_paradigms.updates import (
    AdaTaskUpdater,
    AlternatingUpdater,
    JointUpdater,
    PathLength,
    StepOutput,
    UpdateContext,
    Updater,
    make_updater,
    task_gradients,
    task_jacobian,
    task_losses,
    training_step,
    weighted_sum,
)

NO_AUTOCAST = torch.autocast("cpu", enabled=False)


@given(num_tasks=st.integers(1, 50), group_size=st.integers(1, 60), seed=st.integers(0, 2**31))
@settings(max_examples=100, deadline=None)
def test_random_grouping_covers_every_task_exactly_once(
    num_tasks: int, group_size: int, seed: int
) -> None:
    groups = task_groups(num_tasks, group_size, torch.Generator().manual_seed(seed))
    assert sorted(t for g in groups for t in g) == list(range(num_tasks))
    assert len(groups) == math.ceil(num_tasks / group_size)
    assert all(1 <= len(g) <= group_size for g in groups)


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    tasks = make_tasks("nyuv2", 13)
    model = build_model("segnet", {k: t.out_channels for k, t in tasks.items()}, width=0.125)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, 32, 32, generator=gen)
    targets = {
        "segmentation": torch.randint(-1, 13, (4, 32, 32), generator=gen),
        "depth": torch.rand(4, 1, 32, 32, generator=gen),
        "normal": torch.nn.functional.normalize(torch.randn(4, 3, 32, 32, generator=gen), dim=1),
    }
    return tasks, model, images, targets


def _sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_one_group_of_all_tasks_is_the_equal_weighting_step() -> None:
    tasks, model, images, targets = _problem()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    joint = JointUpdater(model, tasks, make_method("ew"), [], NO_AUTOCAST, _sgd(0.1))
    joint.step(images, targets)
    after_joint = _flat(model)
    model.load_state_dict(start)
    alternating = AlternatingUpdater(
        model, tasks, make_method("mtl_ius", {"group_size": 3}), NO_AUTOCAST, _sgd(0.1), gen
    )
    assert alternating.groups == [[0, 1, 2]]
    alternating.step(images, targets)
    torch.testing.assert_close(_flat(model), after_joint)


def test_per_task_steps_use_each_group_once_and_io_keeps_one_optimizer_per_group() -> None:
    tasks, model, images, targets = _problem()
    gen = torch.Generator().manual_seed(0)
    ius = AlternatingUpdater(
        model, tasks, make_method("mtl_ius", {"group_size": 1}), NO_AUTOCAST, _sgd(0.1), gen
    )
    io = AlternatingUpdater(
        model, tasks, make_method("mtl_io", {"group_size": 2}), NO_AUTOCAST, _sgd(0.1), gen
    )
    assert (len(ius.groups), len(ius.optimizers)) == (3, 1)
    assert (len(io.groups), len(io.optimizers)) == (2, 2)
    out = ius.step(images, targets)
    assert torch.isfinite(out.losses).all()
    assert out.weights.tolist() == [1.0, 1.0, 1.0]
    assert ius.path.total.item() > 0


def test_adatask_first_step_moves_shared_weights_by_the_mean_of_per_task_sign_updates() -> None:
    tasks, model, images, targets = _problem()
    lr = 1e-3
    updater = make_updater(
        model, tasks, make_method("adatask"), [], NO_AUTOCAST,
        lambda params: torch.optim.Adam(params, lr=lr, eps=1e-30),
        optimizer_name="adam", lr=lr, adam_betas=(0.9, 0.999), adam_eps=1e-30, weight_decay=0.0,
        generator=torch.Generator(),
    )  # fmt: skip
    assert isinstance(updater, AdaTaskUpdater)
    shared = model.shared_parameters()
    before = torch.cat([p.detach().reshape(-1).clone() for p in shared])
    # The per-task gradients before the step, computed independently.
    preds = model(images)
    grads = []
    for n, t in tasks.items():
        g = torch.autograd.grad(t.loss(preds[n], targets[n]), shared, retain_graph=True,
                                allow_unused=True)  # fmt: skip
        grads.append(torch.cat([
            (x if x is not None else torch.zeros_like(p)).reshape(-1)
            for x, p in zip(g, shared, strict=True)
        ]))  # fmt: skip
    model.zero_grad(set_to_none=True)
    updater.step(images, targets)
    after = torch.cat([p.detach().reshape(-1) for p in shared])
    # First Adam step with eps ~ 0: each task moves by lr * sign(g_t); AdaTask takes the mean.
    g = torch.stack(grads)
    expected = -lr * g.sign().mean(dim=0)
    clear = ((g == 0) | (g.abs() > 1e-12)).all(dim=0)  # no underflow in g^2
    assert clear.float().mean() > 0.99
    torch.testing.assert_close((after - before)[clear], expected[clear], rtol=1e-4, atol=1e-9)


class _OneTaskUpdater(Updater):
    """A strategy's updater defined outside the package: steps on the first task's loss only."""

    def __init__(self, context: UpdateContext, method: Method) -> None:
        super().__init__(context.model, context.tasks, method, [], context.autocast)
        self.context = context
        self.optimizer = context.make_optimizer(list(context.model.parameters()))

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def step(self, images: torch.Tensor, targets) -> StepOutput:
        self.optimizer.zero_grad(set_to_none=True)
        losses = task_losses(self.tasks, self.model(images), targets)
        losses[0].backward()
        self.optimizer.step()
        self.path.update()
        weights = torch.zeros_like(losses).index_fill_(0, torch.tensor([0]), 1.0)
        return StepOutput(losses.detach(), weights)


class _FirstTaskOnly(Strategy):
    """A new strategy, unknown to the package: plugs in by implementing ``make_updater``."""

    name = "first_task_only"

    def make_updater(self, context: UpdateContext) -> Updater:
        return _OneTaskUpdater(context, self)


def test_a_new_strategy_plugs_into_make_updater_without_editing_it() -> None:
    tasks, model, images, targets = _problem()
    gen = torch.Generator()
    val = lambda: (images, targets)  # noqa: E731
    updater = make_updater(
        model, tasks, _FirstTaskOnly(), [], NO_AUTOCAST, _sgd(0.1), optimizer_name="sgd",
        lr=0.1, adam_betas=(0.9, 0.999), adam_eps=1e-8, weight_decay=0.0, generator=gen,
        val_batch=val, batched_jacobian=True,
    )  # fmt: skip
    assert isinstance(updater, _OneTaskUpdater)
    context = updater.context
    assert (context.model, context.tasks, context.generator) == (model, tasks, gen)
    assert (context.optimizer_name, context.lr, context.val_batch) == ("sgd", 0.1, val)
    assert context.batched_jacobian
    out = updater.step(images, targets)
    assert out.weights.tolist() == [1.0, 0.0, 0.0]
    assert updater.path.total.item() > 0


def test_make_updater_has_no_dispatch_on_method_classes() -> None:
    """The updater is the method's choice: no ``isinstance`` in the trainer's entry point, and
    the updater base never names a concrete method."""
    import ast
    import inspect

    import mtl_paradigms.methods.updater as updater_module
    import mtl_paradigms.updates as updates

    tree = ast.parse(inspect.getsource(updates.make_updater))
    calls = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & {"isinstance", "issubclass", "type"}
    concrete = {cls.__name__ for cls in METHODS.values()}
    for module in (updates, updater_module):
        names = {
            n.id for n in ast.walk(ast.parse(inspect.getsource(module))) if isinstance(n, ast.Name)
        }
        assert not names & concrete, module.__name__


def test_a_strategy_must_provide_its_updater() -> None:
    class _NoUpdater(Strategy):
        name = "no_updater"

    with pytest.raises(TypeError, match="make_updater"):
        _NoUpdater()


def test_adatask_refuses_optimizers_other_than_adam() -> None:
    tasks, model, _, _ = _problem()
    with pytest.raises(ValueError, match=r"adatask.*adam"):
        make_updater(
            model, tasks, make_method("adatask"), [], NO_AUTOCAST, _sgd(0.1),
            optimizer_name="sgd", lr=0.1, adam_betas=(0.9, 0.999), adam_eps=1e-8,
            weight_decay=0.0, generator=torch.Generator(),
        )  # fmt: skip


def test_path_length_sums_the_step_lengths() -> None:
    p = torch.zeros(3)
    path = PathLength([p])
    p.add_(torch.tensor([3.0, 4.0, 0.0]))
    path.update()
    p.add_(torch.tensor([0.0, 0.0, 2.0]))
    path.update()
    path.update()  # no move
    assert path.total.item() == pytest.approx(7.0)


def test_path_length_of_one_sgd_step_is_lr_times_the_shared_gradient_norm() -> None:
    tasks, model, images, targets = _problem()
    updater = JointUpdater(model, tasks, make_method("ew"), [], NO_AUTOCAST, _sgd(0.05))
    updater.optimizer.step = lambda: None  # capture the gradient first
    updater.step(images, targets)
    norm = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]).norm()
    updater.optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    updater.optimizer.step()
    updater.path.update()
    assert updater.path.total.item() == pytest.approx(0.05 * norm.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["mgda", "cagrad", "imtl_g", "aligned_mtl", "gradnorm", "mgda_ub"])
def test_aggregators_with_weights_report_them(name: str) -> None:
    tasks, model, images, targets = _problem()
    method = make_method(name)
    params = method.bind(len(tasks))
    out = training_step(model, tasks, method, images, targets, NO_AUTOCAST, params)
    assert torch.isfinite(out.weights).all()


def test_mgda_ub_moves_shared_weights_by_the_weighted_loss_gradient() -> None:
    tasks, model, images, targets = _problem()
    method = make_method("mgda_ub")
    out = training_step(model, tasks, method, images, targets, NO_AUTOCAST)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    preds = model(images)
    losses = torch.stack([t.loss(preds[n], targets[n]) for n, t in tasks.items()])
    (out.weights * losses).sum().backward()
    for a, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_famo_leaves_batchnorm_statistics_as_one_forward_would() -> None:
    tasks, model, images, targets = _problem()
    famo = make_method("famo")
    famo.bind(len(tasks))
    updater = JointUpdater(model, tasks, famo, [], NO_AUTOCAST, _sgd(0.0))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    updater.step(images, targets)
    once = bn.running_mean.clone()
    with torch.no_grad():
        bn.running_mean.copy_(before)
        model(images)  # one training-mode forward
    torch.testing.assert_close(once, bn.running_mean)
    assert bn.momentum == 0.1  # restored


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "imtl", "mgda_ub"])
def test_batched_task_jacobian_gives_the_loop_s_gradients(name: str) -> None:
    grads = []
    for batched in (False, True):
        tasks, model, images, targets = _problem()
        method = make_method(name)
        params = method.bind(len(tasks))
        training_step(model, tasks, method, images, targets, NO_AUTOCAST, params, batched)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    scale = grads[0].abs().max().item()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("batched", [False, True])
def test_task_jacobian_rows_are_each_task_s_gradients_with_zeros_where_unused(
    batched: bool,
) -> None:
    # Task 0 uses a and b, task 1 only b, task 2 only c: rows in the order of the losses,
    # parameters flattened and concatenated in the order given, zeros where a task does not
    # reach a parameter.
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, generator=gen, requires_grad=True)
    b = torch.randn(4, generator=gen, requires_grad=True)
    c = torch.randn(1, generator=gen, requires_grad=True)
    losses = torch.stack([(a**2).sum() * b.sum(), b.pow(3).sum(), 2 * c.sum()])
    jac = task_jacobian(losses, [a, b, c], batched=batched)
    expected = torch.zeros(3, 11)
    expected[0, :6] = (2 * a * b.sum()).detach().reshape(-1)
    expected[0, 6:10] = (a**2).sum().detach()
    expected[1, 6:10] = (3 * b**2).detach()
    expected[2, 10] = 2.0
    torch.testing.assert_close(jac, expected)


@pytest.mark.parametrize("name", ["ew", "pcgrad", "mgda"])
def test_channels_last_gradients_have_the_parameters_layout_and_the_same_values(
    name: str,
) -> None:
    # Fused CUDA optimizers refuse a .grad whose strides differ from its parameter's; an
    # aggregator's flat direction viewed as a channels_last weight had contiguous strides.
    grads = []
    for channels_last in (False, True):
        tasks, model, images, targets = _problem()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        method = make_method(name)
        params = method.bind(len(tasks))
        training_step(model, tasks, method, images, targets, NO_AUTOCAST, params)
        with_grad = [p for p in model.parameters() if p.grad is not None]
        assert with_grad
        for p in with_grad:
            assert p.grad.stride() == p.stride(), p.shape
        assert any(p.dim() == 4 and not p.is_contiguous() for p in with_grad) == channels_last
        grads.append(torch.cat([p.grad.reshape(-1) for p in with_grad]))
    # channels_last convolutions round differently (about 2e-4 of the largest gradient here);
    # values in the wrong places would differ by the gradients' own size
    scale = grads[0].abs().max().item()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-3 * scale)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("name", ["pcgrad", "imtl", "gradnorm", "mgda_ub"])
def test_heads_and_method_parameters_get_the_gradient_of_the_weighted_transformed_loss(
    name: str, batched: bool
) -> None:
    # They are summed from the per-task passes (no pass of their own); the reference is one
    # backward of sum_t v_t L'_t with v = 1/T, or the method's weights (weights_heads), on the
    # same model and batch.
    tasks, model, images, targets = _problem()
    method = make_method(name)
    params = method.bind(len(tasks))
    out = training_step(model, tasks, method, images, targets, NO_AUTOCAST, params, batched)
    others = [p for name_ in tasks for p in model.task_parameters(name_)]
    others += [p for p in params if p.requires_grad]
    got = [None if p.grad is None else p.grad.clone() for p in others]
    transformed = method.transform_losses(task_losses(tasks, model(images), targets))
    v = out.weights if method.weights_heads else torch.full((len(tasks),), 1 / len(tasks))
    expected = torch.autograd.grad((v * transformed).sum(), others, allow_unused=True)
    reached = [(g, e) for g, e in zip(got, expected, strict=True) if e is not None]
    assert len(reached) >= len(list(model.heads.parameters()))
    for g, e in reached:
        assert g is not None
        scale = e.abs().max().item() + 1e-12
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("batched", [False, True])
def test_task_gradients_extra_tensors_sum_to_the_weighted_loss_gradient(batched: bool) -> None:
    # a is shared, h0 / h1 belong to one task each, s reaches every task's loss.
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, generator=gen, requires_grad=True)
    h0 = torch.randn(2, generator=gen, requires_grad=True)
    h1 = torch.randn(2, generator=gen, requires_grad=True)
    s = torch.randn(2, generator=gen, requires_grad=True)
    unused = torch.randn(1, generator=gen, requires_grad=True)

    def losses() -> torch.Tensor:
        base = torch.stack([(a.sum() * h0).square().sum(), (a * a).sum() * h1.exp().sum()])
        return base * s.exp() - s

    weights = torch.tensor([0.3, 1.7])
    extra = [h0, h1, s, unused]
    jac, per_task = task_gradients(losses(), [a], extra, batched=batched)
    torch.testing.assert_close(jac, task_jacobian(losses(), [a]))
    expected = torch.autograd.grad((weights * losses()).sum(), extra, allow_unused=True)
    for got, want in zip([weighted_sum(g, weights) for g in per_task], expected, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want)


def _count_head_backwards(model) -> dict[str, list[int]]:
    """Per head, how many backward passes reach its output (a hook on each forward's output)."""
    counts: dict[str, list[int]] = {name: [0] for name in model.heads}

    def hook(name: str):
        def on_forward(_module, _args, output) -> None:
            def on_backward(grad: torch.Tensor) -> None:
                counts[name][0] += 1

            output.register_hook(on_backward)

        return on_forward

    for name, head in model.heads.items():
        head.register_forward_hook(hook(name))
    return counts


@pytest.mark.parametrize("name", ["pcgrad", "imtl", "mgda_ub", "adatask"])
def test_each_per_task_pass_runs_through_its_own_head_only(name: str) -> None:
    # A pass from one entry of the stacked loss vector carries zeros back through every other
    # head: T heads' backward per pass instead of one (3x the heads' work at T = 3).
    tasks, model, images, targets = _problem()
    counts = _count_head_backwards(model)
    method = make_method(name)
    params = method.bind(len(tasks))
    updater = make_updater(
        model, tasks, method, params, NO_AUTOCAST,
        lambda p: torch.optim.Adam(p, lr=1e-3), optimizer_name="adam", lr=1e-3,
        adam_betas=(0.9, 0.999), adam_eps=1e-8, weight_decay=0.0, generator=torch.Generator(),
    )  # fmt: skip
    updater.step(images, targets)
    assert {k: v[0] for k, v in counts.items()} == dict.fromkeys(tasks, 1)


def test_task_gradients_refuse_losses_that_are_not_one_scalar_per_task() -> None:
    a = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"one scalar loss per task, got shapes \[\(3,\)\]"):
        task_gradients([a * 2], [a], ())
    with pytest.raises(ValueError, match="one scalar loss per task"):
        task_gradients([], [a], ())


@pytest.mark.parametrize("name", ["pcgrad", "imtl"])
def test_loop_gradients_of_separate_losses_equal_those_of_the_stacked_vector(name: str) -> None:
    # One pass per task's own loss (and, for IMTL's loss scaling, the chain rule) gives the
    # gradients that one pass per entry of the transformed loss vector gives (the reference).
    tasks, model, images, targets = _problem()
    method = make_method(name)
    params = method.bind(len(tasks))
    own = [p for p in params if p.requires_grad]
    assert bool(own) == (name == "imtl")
    with torch.no_grad():
        for p in own:
            p.copy_(torch.tensor([0.3, -0.5, 1.1]))  # scales away from 1
    training_step(model, tasks, method, images, targets, NO_AUTOCAST, params)
    trainable = [*model.parameters(), *own]
    got = [p.grad for p in trainable]
    model.zero_grad(set_to_none=True)

    transformed = method.transform_losses(task_losses(tasks, model(images), targets))
    shared = model.shared_parameters()
    jac = task_jacobian(transformed, shared)  # one pass per entry of the vector
    direction, weights = make_method(name).aggregate(jac)  # PCGrad: the same projection orders
    v = weights if method.weights_heads else torch.full((len(tasks),), 1 / len(tasks))
    others = [p for p in trainable if all(p is not q for q in shared)]
    expected = dict(
        zip(map(id, others), torch.autograd.grad((v * transformed).sum(), others), strict=True)
    )
    expected |= dict(
        zip(map(id, shared), direction.split([p.numel() for p in shared]), strict=True)
    )
    # one scale for all: some gradients are zero up to rounding (a bias before BatchNorm)
    scale = max(e.abs().max().item() for e in expected.values())
    for p, g in zip(trainable, got, strict=True):
        assert g is not None
        torch.testing.assert_close(g, expected[id(p)].view_as(p), rtol=1e-4, atol=1e-5 * scale)


@st.composite
def _layouts(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense tensor with a random memory order of its dimensions, sizes 1 included, and a
    gradient of its shape in a random layout of its own."""
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))

    def dense(perm: list[int], start: float) -> torch.Tensor:
        # distinct values, so that any element out of place shows
        inverse = [perm.index(d) for d in range(len(shape))]
        values = torch.arange(math.prod(shape), dtype=torch.float64) + start
        return values.reshape([shape[d] for d in perm]).permute(inverse)

    order = draw(st.permutations(range(len(shape))))
    other = draw(st.permutations(range(len(shape))))
    return dense(list(order), 0.0), dense(list(other), 0.5)


@given(_layouts())
@settings(max_examples=200, deadline=None)
def test_flattening_in_memory_order_round_trips_with_the_parameter_s_layout(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    from mtl_paradigms.updates import _flatten_like, _view_like

    p, g = pair
    # p's own values flatten to its memory, as a view
    flat_p = _flatten_like(p, p)
    torch.testing.assert_close(flat_p, p.as_strided((p.numel(),), (1,)), rtol=0, atol=0)
    assert flat_p.data_ptr() == p.data_ptr()
    # any gradient comes back with its values and p's strides
    back = _view_like(p, _flatten_like(p, g))
    torch.testing.assert_close(back, g, rtol=0, atol=0)
    assert back.stride() == p.stride()
    # batched: each row as the unbatched flattening
    rows = _flatten_like(p, torch.stack([g, 2 * g]), batch_dims=1)
    torch.testing.assert_close(rows, torch.stack([_flatten_like(p, g), _flatten_like(p, 2 * g)]))


def test_a_parameter_that_does_not_fill_its_memory_flattens_in_index_order() -> None:
    from mtl_paradigms.updates import _flatten_like, _view_like

    p = torch.randn(4, 6)[:, ::2]  # strides (6, 2): not dense
    g = torch.randn(4, 3)
    torch.testing.assert_close(_flatten_like(p, g), g.reshape(-1))
    back = _view_like(p, _flatten_like(p, g))
    torch.testing.assert_close(back, g)
    assert back.is_contiguous()  # as backward() leaves the gradient of such a tensor


def test_auto_lambda_s_per_task_passes_run_through_their_own_head_only() -> None:
    # One step: the meta step's T per-task passes (one per head) and its validation pass,
    # then the weighted loss's backward: three backward passes reach each head, not T + 2.
    tasks, model, images, targets = _problem()
    counts = _count_head_backwards(model)
    method = make_method("auto_lambda")
    params = method.bind(len(tasks))
    updater = make_updater(
        model, tasks, method, params, NO_AUTOCAST, _sgd(0.1), optimizer_name="sgd", lr=0.1,
        adam_betas=(0.9, 0.999), adam_eps=1e-8, weight_decay=0.0, generator=torch.Generator(),
        val_batch=lambda: (images, targets),
    )  # fmt: skip
    updater.step(images, targets)
    assert {k: v[0] for k, v in counts.items()} == dict.fromkeys(tasks, 3)
