"""Schedules: bounds per step and per layer, explicit state, resumption from a state dict."""

import math

import pytest
import torch

from actzip.schedule import (
    Adaptive,
    Constant,
    Gradual,
    LayerStats,
    MemoryBudget,
    PerLayer,
    StepStats,
    as_schedule,
    gradient_spread_by_layer,
    layer_matches,
)


# --------------------------------------------------------------------------- Constant


def test_constant_gives_the_same_bound_to_every_layer_at_every_step():
    schedule = Constant(1e-3)
    for _ in range(5):
        assert schedule.error_bound("a") == schedule.error_bound("b", torch.nn.ReLU) == 1e-3
        schedule.step()
    assert schedule.last_step == 5


@pytest.mark.parametrize("bad", [0, -1e-3, math.inf, math.nan])
def test_constant_rejects_non_positive_or_non_finite_bound(bad):
    with pytest.raises(ValueError):
        Constant(bad)


def test_constant_rejects_non_numbers():
    with pytest.raises(TypeError):
        Constant("1e-3")
    with pytest.raises(TypeError):
        Constant(True)


# --------------------------------------------------------------------------- Gradual


def test_gradual_is_constant_before_begin_and_after_end():
    schedule = Gradual(1e-4, 1e-2, 10, 20)
    assert [schedule.bound_at(t) for t in (0, 5, 10)] == [1e-4] * 3
    assert [schedule.bound_at(t) for t in (20, 25, 10_000)] == [1e-2] * 3


def test_gradual_follows_the_polynomial_in_log_space():
    initial, final, begin, end = 1e-4, 1e-2, 100, 200
    schedule = Gradual(initial, final, begin, end, power=3)
    for t in (110, 150, 190):
        fraction = (t - begin) / (end - begin)
        expected = math.exp(math.log(final) + (math.log(initial) - math.log(final)) * (1 - fraction) ** 3)
        assert schedule.bound_at(t) == pytest.approx(expected, rel=1e-12)
    # Half way, (1 - 0.5)^3 = 1/8 of the log distance remains: 10^(-2 - 2/8).
    assert schedule.bound_at(150) == pytest.approx(10 ** (-2.25), rel=1e-12)


def test_gradual_rises_monotonically_and_fastest_at_first():
    schedule = Gradual(1e-4, 1e-2, 0, 100)
    logs = [math.log10(schedule.bound_at(t)) for t in range(101)]
    increments = [b - a for a, b in zip(logs, logs[1:])]
    assert all(step > 0 for step in increments)
    assert increments[0] > increments[50] > increments[-1]


def test_gradual_may_tighten():
    schedule = Gradual(1e-2, 1e-4, 0, 10)
    bounds = [schedule.bound_at(t) for t in range(11)]
    assert bounds == sorted(bounds, reverse=True)
    assert bounds[0] == 1e-2 and bounds[-1] == 1e-4


def test_gradual_changes_only_every_frequency_steps():
    schedule = Gradual(1e-4, 1e-2, 0, 100, frequency=10)
    for start in range(0, 100, 10):
        values = {schedule.bound_at(t) for t in range(start, start + 10)}
        assert len(values) == 1
    assert schedule.bound_at(10) > schedule.bound_at(9)


def test_gradual_error_bound_follows_its_steps():
    schedule = Gradual(1e-4, 1e-2, 0, 4)
    seen = []
    for _ in range(6):
        seen.append(schedule.error_bound("any"))
        schedule.step()
    assert seen == [schedule.bound_at(t) for t in range(6)]


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((1e-4, 1e-2, 5, 5), {}, ValueError),
        ((1e-4, 1e-2, 6, 5), {}, ValueError),
        ((0, 1e-2, 0, 5), {}, ValueError),
        ((1e-4, 1e-2, -1, 5), {}, ValueError),
        ((1e-4, 1e-2, 0, 5), {"frequency": 0}, ValueError),
        ((1e-4, 1e-2, 0, 5), {"power": 0}, ValueError),
        ((1e-4, 1e-2, 0.5, 5), {}, TypeError),
    ],
)
def test_gradual_rejects_bad_arguments(args, kwargs, error):
    with pytest.raises(error):
        Gradual(*args, **kwargs)


# --------------------------------------------------------------------------- state dicts


def _layer_stats(numel, nonzero, compressed, requested, value_range=2.0, grad_std=None):
    return LayerStats(
        numel=numel,
        nonzero=nonzero,
        raw_bytes=4 * numel,
        compressed_bytes=compressed,
        requested_bound=requested,
        error_bound=requested * value_range,
        value_range=value_range,
        grad_std=grad_std,
    )


def _drive(schedule, steps, start=0):
    """Step a schedule with synthetic statistics; return the bounds it gave."""
    shapes = {"conv": (10_000, 10_000, 20_000, 500, 0.01), "relu": (10_000, 5_000, 8_000, 300, None), "fc": (1_000, 1_000, 2_000, 60, 0.02)}
    bounds = []
    for t in range(start, start + steps):
        layers = {}
        for name, (numel, nonzero, bytes_at_one, per_doubling, grad_std) in shapes.items():
            bound = schedule.error_bound(name)
            if bound is None:
                layers[name] = LayerStats(grad_std=grad_std)
            else:
                compressed = int(bytes_at_one - per_doubling * math.log2(bound))
                layers[name] = _layer_stats(numel, nonzero, compressed, bound, grad_std=grad_std)
        bounds.append([schedule.error_bound(name) for name in shapes])
        stats = StepStats(
            step=t,
            mode="rel",
            loss=2.0 / (1 + t),
            layers=layers,
            layer_order=list(shapes),
            weighted_layers=["conv", "fc"],
            peak_compressed_bytes=40_000,
            peak_raw_bytes=84_000,
            has_statistics=schedule.wants_statistics(),
        )
        schedule.step(stats)
    return bounds


@pytest.mark.parametrize(
    "make",
    [
        lambda: Constant(1e-3),
        lambda: Gradual(1e-4, 1e-2, 2, 12, frequency=2),
        lambda: Adaptive(1e-3, interval=3, a=0.5),
        lambda: MemoryBudget(50_000, initial=1e-3),
        lambda: PerLayer({"relu": Gradual(1e-4, 1e-2, 0, 10), "fc": None}, default=Constant(2e-3)),
    ],
)
def test_state_dict_resumes_with_the_same_bounds(make):
    reference = make()
    expected = _drive(reference, 20)

    first = make()
    _drive(first, 8)
    state = first.state_dict()
    torch.save(state, "/dev/null")  # plain values: checkpointable
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.last_step == 8
    assert _drive(resumed, 12, start=8) == expected[8:]


def test_load_state_dict_with_missing_keys_raises():
    with pytest.raises(KeyError):
        Gradual(1e-4, 1e-2, 0, 10).load_state_dict({})


# --------------------------------------------------------------------------- Adaptive


def _adaptive_stats(step, loss, has_statistics=True, mode="rel"):
    return StepStats(
        step=step,
        mode=mode,
        loss=loss,
        layers={
            "block.conv": LayerStats(numel=4000, nonzero=4000, requested_bound=1e-3, error_bound=4e-3, value_range=4.0, grad_std=0.02),
            "block.relu": LayerStats(numel=4000, nonzero=1000, requested_bound=1e-3, error_bound=2e-3, value_range=2.0),
            "block.conv2": LayerStats(grad_std=0.05),  # weighted, saved nothing of its own
        },
        layer_order=["block", "block.conv", "block.relu", "block.conv2"],
        weighted_layers=["block.conv", "block.conv2"],
        has_statistics=has_statistics,
    )


def test_adaptive_sets_comet_bound_per_layer():
    a, beta, interval = 0.7, 0.1, 2
    schedule = Adaptive(1e-3, interval=interval, beta=beta, a=a, max_change=1e6, min_bound=1e-12, max_bound=1.0)
    assert not schedule.wants_statistics()
    schedule.step(_adaptive_stats(0, 3.0, has_statistics=False))
    assert schedule.wants_statistics()
    schedule.step(_adaptive_stats(1, 1.0))
    mean_loss = 2.0
    conv = beta * 0.02 / (a * mean_loss * math.sqrt(4000)) / 4.0
    # The ReLU has no weights: it takes sigma from the next weighted layer (conv2).
    relu = beta * 0.05 / (a * mean_loss * math.sqrt(1000)) / 2.0
    assert schedule.error_bound("block.conv") == pytest.approx(conv, rel=1e-12)
    assert schedule.error_bound("block.relu") == pytest.approx(relu, rel=1e-12)
    assert schedule.error_bound("unseen") == 1e-3


def test_adaptive_abs_mode_does_not_divide_by_the_range():
    schedule = Adaptive(1e-3, interval=1, beta=0.1, a=1.0, max_change=1e6, min_bound=1e-12, max_bound=1.0)
    schedule.step(_adaptive_stats(0, 2.0, mode="abs"))
    assert schedule.error_bound("block.conv") == pytest.approx(0.1 * 0.02 / (2.0 * math.sqrt(4000)), rel=1e-12)


def test_adaptive_clamps_to_limits_and_rate_of_change():
    schedule = Adaptive(1e-3, interval=1, a=1e-9, min_bound=1e-5, max_bound=5e-2, max_change=10)
    schedule.step(_adaptive_stats(0, 1.0))  # huge bound asked: limited to 10x the previous
    assert schedule.error_bound("block.conv") == pytest.approx(1e-2)
    schedule.step(_adaptive_stats(1, 1.0))
    assert schedule.error_bound("block.conv") == pytest.approx(5e-2)  # max_bound
    tight = Adaptive(1e-3, interval=1, a=1e9, min_bound=1e-5, max_change=1e6)
    tight.step(_adaptive_stats(0, 1.0))
    assert tight.error_bound("block.conv") == pytest.approx(1e-5)  # min_bound


def test_adaptive_without_calibration_warns_once_and_keeps_initial():
    schedule = Adaptive(2e-3, interval=1)
    with pytest.warns(RuntimeWarning, match="not calibrated"):
        schedule.step(_adaptive_stats(0, 1.0))
    schedule.step(_adaptive_stats(1, 1.0))  # no second warning (filterwarnings=error)
    assert schedule.error_bound("block.conv") == 2e-3


def test_adaptive_calibrate_takes_the_median():
    schedule = Adaptive()
    schedule.calibrate({"a": 1.0, "b": 3.0, "c": 100.0, "d": 0.0})
    assert schedule.a == 3.0
    with pytest.raises(ValueError):
        Adaptive().calibrate({"a": 0.0})


def test_adaptive_requires_a_model():
    assert Adaptive().needs_model()


def test_parameterless_layers_inherit_the_next_weighted_spread():
    stats = StepStats(
        step=0,
        layers={"conv1": LayerStats(grad_std=1.0), "conv2": LayerStats(grad_std=2.0)},
        layer_order=["conv1", "relu1", "conv2", "relu2", "pool"],
    )
    assert gradient_spread_by_layer(stats) == {"conv1": 1.0, "relu1": 2.0, "conv2": 2.0, "relu2": 2.0, "pool": 2.0}


# --------------------------------------------------------------------------- MemoryBudget


class _SyntheticNetwork:
    """Compressed size per layer: numel * bits / 8, the bits falling by `rate` per doubling
    of the bound from `bits_at_1e-2` at a bound of 1e-2."""

    def __init__(self):
        self.layers = {"dense": (200_000, 1.0, 4.0), "sparse": (200_000, 0.4, 1.5), "small": (20_000, 1.0, 4.0)}
        self.fixed = 5_000

    def measure(self, schedule, step):
        layers = {}
        total = self.fixed
        for name, (numel, rate, bits_at_reference) in self.layers.items():
            bound = schedule.error_bound(name)
            bits = max(bits_at_reference - rate * math.log2(bound / 1e-2), 0.05)
            nbytes = int(numel * bits / 8)
            total += nbytes
            layers[name] = LayerStats(numel=numel, raw_bytes=4 * numel, compressed_bytes=nbytes, requested_bound=bound)
        return StepStats(step=step, layers=layers, peak_compressed_bytes=total, peak_raw_bytes=4 * 420_000), total


def test_memory_budget_converges_under_the_budget_and_uses_it():
    network = _SyntheticNetwork()
    budget = 200_000
    schedule = MemoryBudget(budget, initial=1e-4, min_bound=1e-6, max_bound=1e-1)
    totals = []
    for step in range(8):
        stats, total = network.measure(schedule, step)
        totals.append(total)
        schedule.step(stats)
    assert totals[0] > budget  # the initial bound is too tight for the budget
    assert all(total <= budget for total in totals[3:])
    assert totals[-1] > 0.8 * budget  # not needlessly loose
    # The sparse layer (fewer bytes per doubling per element) gets the tighter bound.
    assert schedule.error_bound("sparse") < schedule.error_bound("dense")


def test_memory_budget_warns_once_when_the_budget_cannot_be_met():
    network = _SyntheticNetwork()
    schedule = MemoryBudget(1_000, max_bound=1e-2)
    stats, _ = network.measure(schedule, 0)
    schedule.step(stats)  # predicted over budget: every layer goes to max_bound
    assert schedule.error_bound("dense") == pytest.approx(1e-2)
    stats, _ = network.measure(schedule, 1)
    with pytest.warns(RuntimeWarning, match="cannot be kept under"):
        schedule.step(stats)  # measured over budget at max_bound
    stats, _ = network.measure(schedule, 2)
    schedule.step(stats)  # still over budget: no second warning
    assert schedule.over_budget
    assert schedule.error_bound("sparse") == pytest.approx(1e-2)


def test_memory_budget_unknown_layers_start_at_the_mean_bound():
    schedule = MemoryBudget(10_000, initial=1e-3)
    assert schedule.error_bound("never seen") == 1e-3


# --------------------------------------------------------------------------- PerLayer


def test_per_layer_first_matching_rule_wins():
    schedule = PerLayer(
        {torch.nn.LayerNorm: None, "blocks.*.attn*": 1e-3, ("head", torch.nn.Embedding): 5e-4},
        default=2e-3,
    )
    assert schedule.error_bound("blocks.0.ln1", torch.nn.LayerNorm) is None
    assert schedule.error_bound("blocks.0.attn.softmax", torch.nn.Softmax) == 1e-3
    assert schedule.error_bound("head", torch.nn.Linear) == 5e-4
    assert schedule.error_bound("embed", torch.nn.Embedding) == 5e-4
    assert schedule.error_bound("blocks.0.mlp.fc1", torch.nn.Linear) == 2e-3


def test_per_layer_steps_a_shared_child_once():
    shared = Gradual(1e-4, 1e-2, 0, 10)
    schedule = PerLayer({"a": shared, "b": shared})
    schedule.step()
    assert shared.last_step == 1
    assert schedule.error_bound("c") is None  # no default: uncompressed


def test_as_schedule_accepts_numbers_mappings_and_schedules():
    assert isinstance(as_schedule(1e-3), Constant)
    gradual = Gradual(1e-4, 1e-2, 0, 10)
    assert as_schedule(gradual) is gradual
    per_layer = as_schedule({"fc": None, "*": 1e-3})
    assert isinstance(per_layer, PerLayer)
    assert per_layer.error_bound("fc") is None and per_layer.error_bound("conv") == 1e-3
    with pytest.raises(TypeError):
        as_schedule("1e-3")


def test_layer_matches_types_patterns_and_tuples():
    assert layer_matches("layer1.0.conv1", torch.nn.Conv2d, torch.nn.Conv2d)
    assert layer_matches("layer1.0.conv1", torch.nn.Conv2d, torch.nn.modules.conv._ConvNd)
    assert not layer_matches("layer1.0.conv1", None, torch.nn.Conv2d)
    assert layer_matches("layer1.0.conv1", None, "layer1.*")
    assert not layer_matches("layer1.0.conv1", None, "layer2.*")
    assert layer_matches("fc", torch.nn.Linear, ("x", torch.nn.Linear))
    with pytest.raises(TypeError):
        layer_matches("fc", None, 3)


def test_layers_that_only_resave_shared_tensors_adopt_the_producer_bound():
    from actzip.schedule import adopt_producer_bounds

    bounds = {"relu1": 1e-2, "relu2": 3e-3, "bn": 1e-4}
    stats = StepStats(
        step=0,
        layers={"relu1": LayerStats(numel=10), "conv3": LayerStats(), "mixed": LayerStats(numel=5)},
        shared_from={"conv2": ["relu1"], "conv3": ["relu1", "relu2"], "mixed": ["bn"]},
    )
    adopt_producer_bounds(bounds, stats)
    assert bounds["conv2"] == 1e-2
    assert bounds["conv3"] == 1e-2  # the loosest: never tightens a producer's tensors
    assert "mixed" not in bounds  # has tensors of its own: keeps its own bound


def test_adaptive_averages_tensor_losses_without_reading_each_one():
    schedule = Adaptive(1e-3, interval=2, a=1.0, beta=0.1, max_change=1e6, min_bound=1e-12, max_bound=1.0)
    schedule.step(_adaptive_stats(0, torch.tensor(3.0), has_statistics=False))
    assert isinstance(schedule.state_dict()["loss_sum"], float)  # checkpointable
    schedule.step(_adaptive_stats(1, torch.tensor(1.0)))
    expected = 0.1 * 0.02 / (2.0 * math.sqrt(4000)) / 4.0
    assert schedule.error_bound("block.conv") == pytest.approx(expected, rel=1e-12)


def test_adaptive_skips_an_update_after_a_non_finite_loss():
    schedule = Adaptive(1e-3, interval=1, a=1.0)
    schedule.step(_adaptive_stats(0, math.nan))
    assert schedule.bounds == {}
