"""Autograd integration: what gets compressed, correctness of backward, accounting, and
how the context behaves with autocast, no_grad, checkpointing, nesting, exceptions and
torch.compile. Every test uses the real codec unless it says otherwise."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import actzip
from actzip import codec, training
from actzip.schedule import Adaptive, Constant, Gradual, MemoryBudget
from actzip.training import compressed_activations

SMALL = 4096  # min_bytes for the small test models


def _cnn(seed=0, channels=8):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1, bias=False),  # a bias before BatchNorm has no gradient
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 5),
    )


def _batch(seed=1, n=8, size=16):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def _gradients(model, x, y, context=None):
    model.zero_grad(set_to_none=True)
    if context is None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    else:
        with context:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, loss.detach()


def _assert_close(got, expected, rtol, atol):
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol, msg=name)


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("mode, bound", [("rel", 1e-6), ("abs", 1e-7)])
def test_tiny_bound_gives_the_gradients_of_an_uncompressed_run(mode, bound):
    model, (x, y) = _cnn(), _batch()
    expected, _ = _gradients(copy.deepcopy(model), x, y)
    az = compressed_activations(model, schedule=bound, mode=mode, min_bytes=SMALL)
    got, _ = _gradients(model, x, y, az)
    _assert_close(got, expected, rtol=1e-3, atol=1e-5)
    az.step()
    record = az.history[0]
    assert record["tensors_compressed"] >= 4
    assert record["failures"] == 0


def test_loose_bound_compresses_and_keeps_gradients_close():
    model, (x, y) = _cnn(), _batch()
    expected, _ = _gradients(copy.deepcopy(model), x, y)
    az = compressed_activations(model, schedule=1e-2, min_bytes=SMALL)
    got, _ = _gradients(model, x, y, az)
    az.step()
    record = az.history[0]
    assert record["compressed_bytes"] < record["raw_bytes"] / 2
    assert record["peak_compressed_bytes"] < record["peak_raw_bytes"] / 2
    for name in expected:
        error = (got[name] - expected[name]).norm() / expected[name].norm()
        assert error < 0.1, name


def test_saved_storage_is_compressed_once_and_counted_once():
    # conv -> in-place ReLU -> conv: the ReLU's output is the very storage conv2 saves.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(4, 3, 16, 16)
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        model(x).sum().backward()
        az.step()
    record = az.history[0]
    activation_bytes = 4 * 8 * 16 * 16 * 4
    assert record["tensors_shared"] == 1
    assert record["layer_raw_bytes"]["1"] == activation_bytes  # the ReLU saved it first
    assert "2" not in record["layer_raw_bytes"]  # conv2 shared it: not counted again
    assert record["raw_bytes"] == x.numel() * 4 + activation_bytes
    assert record["peak_raw_bytes"] == record["raw_bytes"]


def test_views_and_reused_memory_of_one_storage_are_never_confused():
    x = torch.randn(64, 128, requires_grad=True)
    def forward(x):
        base = x * 2
        first = base[:32].sin()                      # saves a view at offset 0
        second = base.view(128, 64).sin()            # same storage, other shape
        third = base.t().cos()                       # same storage, other strides
        total = first.sum() + second.sum() + third.sum()
        for scale in (3.0, 4.0):  # temporaries freed after their save: memory may be reused
            total = total + (x * scale).sin().sum()
        return total
    forward(x).backward()
    expected = x.grad.clone()
    x.grad = None
    with compressed_activations(schedule=1e-6, mode="abs", min_bytes=SMALL) as az:
        forward(x).backward()
        az.step()
    # d/dx sin(4x) = 4 cos(4x): a saved-value error of 1e-6 moves it by at most 1.6e-5.
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-4)
    assert az.history[0]["tensors_shared"] == 0


@pytest.mark.parametrize("min_bytes", [SMALL, 1 << 30], ids=["compressed", "kept"])
def test_inplace_change_of_a_saved_tensor_raises_torch_error(min_bytes):
    x = torch.randn(64, 64, requires_grad=True)
    with compressed_activations(schedule=1e-3, min_bytes=min_bytes):
        y = x * 2
        z = y.sin()  # saves y
        y.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.sum().backward()


def test_unpacked_tensors_keep_shape_dtype_device_and_strides():
    az = compressed_activations(schedule=1e-6, min_bytes=SMALL)
    cases = [
        torch.randn(4, 8, 16, 16).to(memory_format=torch.channels_last),
        torch.randn(64, 96).t(),
        torch.randn(1, 96).expand(64, 96),
        torch.randn(64, 200)[:, ::2],
        torch.randn(8, 64, 64, dtype=torch.float64).to(torch.bfloat16),
        torch.randn(8, 64, 64).half(),
    ]
    for tensor in cases:
        saved = az._pack(tensor)
        unpacked = az._unpack(saved)
        assert unpacked.shape == tensor.shape and unpacked.dtype == tensor.dtype
        assert unpacked.device == tensor.device
        has_gaps = tensor.stride() == (200, 2)
        assert (unpacked.stride() == tensor.stride()) != has_gaps
        tolerance = 2 * 1e-6 * float(tensor.float().max() - tensor.float().min()) + 1e-2 * (tensor.dtype != torch.float32)
        assert (unpacked.float() - tensor.float()).abs().max() <= tolerance


def test_integer_tensors_pass_through_and_bool_masks_pack_to_one_bit():
    x = torch.randn(8, 16, 32, 32, requires_grad=True)
    mask = torch.rand(8, 16, 32, 32) > 0.5
    def forward(x):
        pooled, _ = F.max_pool2d(x, 2, return_indices=True)  # saves int64 indices
        chosen = torch.where(mask, x, x * 3)                 # saves the bool condition
        return pooled.sum() + chosen.square().sum()
    forward(x).backward()
    expected = x.grad.clone()
    x.grad = None
    with compressed_activations(schedule=1e-6, mode="abs", min_bytes=SMALL) as az:
        forward(x).backward()
        az.step()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-4)
    record = az.history[0]
    assert record["masks_packed"] == 1
    assert record["tensors_kept"] >= 1  # the indices


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 4095, 70_001])
def test_bit_packing_round_trips_exactly(numel):
    mask = torch.rand(numel) > 0.3
    packed = training._pack_bits(mask)
    assert packed.numel() == (numel + 7) // 8
    assert torch.equal(training._unpack_bits(packed, mask.shape), mask)
    # The torch-operations twin (used on accelerators) makes the same bytes.
    assert torch.equal(training._pack_bits_torch(mask), packed)
    assert torch.equal(training._unpack_bits_torch(packed, mask.shape), mask)


def test_parameters_and_autocast_weight_copies_are_not_compressed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    x = torch.randn(64, 256)
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().sum().backward()
        az.step()
    record = az.history[0]
    # Compressed: the input, and the ReLU output (shared with the second Linear).
    assert record["tensors_compressed"] == 2
    assert set(record["error_bounds"]) == {"0", "1"}


# --------------------------------------------------------------------------- accounting


def test_live_bytes_return_to_zero_after_backward_and_peaks_are_per_step():
    model, (x, y) = _cnn(), _batch()
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        loss = F.cross_entropy(model(x), y)
        raw_live, stored_live = az.live_bytes
        assert raw_live > stored_live > 0
        loss.backward()
        assert az.live_bytes == (0, 0)
        az.step()
        az.step()  # a step without forward
    first, second = az.history
    assert first["peak_raw_bytes"] == raw_live
    assert first["peak_compressed_bytes"] == stored_live
    assert second["peak_raw_bytes"] == second["raw_bytes"] == 0


def test_dropped_graph_releases_its_bytes():
    model, (x, _) = _cnn(), _batch()
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        out = model(x)
        assert az.live_bytes[0] > 0
        del out
        assert az.live_bytes == (0, 0)


def test_measure_only_run_counts_the_same_raw_bytes():
    model, (x, y) = _cnn(), _batch()
    with compressed_activations(model, schedule=None, min_bytes=SMALL) as meter:
        F.cross_entropy(model(x), y).backward()
        meter.step()
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        F.cross_entropy(model(x), y).backward()
        az.step()
    assert meter.history[0]["tensors_compressed"] == 0
    assert meter.history[0]["peak_raw_bytes"] == meter.history[0]["peak_compressed_bytes"]
    assert meter.history[0]["peak_raw_bytes"] == az.history[0]["peak_raw_bytes"]


def test_shared_tensor_unpacked_by_two_savers_survives_retain_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(4, 3, 16, 16)
    with compressed_activations(model, schedule=1e-6, min_bytes=SMALL):
        loss = model(x).square().sum()
        loss.backward(retain_graph=True)
        once = [p.grad.clone() for p in model.parameters()]
        loss.backward()
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)


# --------------------------------------------------------------------------- contexts


def test_no_grad_saves_nothing():
    model, (x, _) = _cnn(), _batch()
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        with torch.no_grad():
            model(x)
        az.step()
    assert az.history[0]["raw_bytes"] == 0


def test_autocast_bfloat16_trains_close_to_uncompressed():
    model, (x, y) = _cnn(channels=16), _batch()
    reference = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = _gradients(reference, x, y)
    az = compressed_activations(model, schedule=1e-4, min_bytes=SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = _gradients(model, x, y, az)
    az.step()
    assert az.history[0]["tensors_compressed"] >= 3
    for name in expected:
        error = (got[name].float() - expected[name].float()).norm() / expected[name].float().norm()
        assert error < 0.05, name


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_regions_give_the_same_gradients(use_reentrant):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    head = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(4, 3, 16, 16)

    def forward():
        h = head(x)
        return torch.utils.checkpoint.checkpoint(block, h, use_reentrant=use_reentrant).square().sum()

    forward().backward()
    expected = [p.grad.clone() for p in list(head.parameters()) + list(block.parameters())]
    for p in list(head.parameters()) + list(block.parameters()):
        p.grad = None
    with compressed_activations(schedule=1e-6, min_bytes=SMALL) as az:
        forward().backward()
        az.step()
    got = [p.grad for p in list(head.parameters()) + list(block.parameters())]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4)
    assert az.history[0]["tensors_compressed"] >= 1


def test_nested_contexts_inner_takes_over_then_outer_resumes():
    w = torch.randn(64, 64, requires_grad=True)  # a leaf that needs grad counts as a parameter
    with compressed_activations(schedule=1e-3, min_bytes=SMALL) as outer:
        (w * 2).sin().sum().backward()
        with compressed_activations(schedule=1e-3, min_bytes=SMALL) as inner:
            (w * 2).cos().sum().backward()
            inner.step()
        (w * 2).exp().sum().backward()
        outer.step()
    assert inner.history[0]["tensors_compressed"] == 1
    assert outer.history[0]["tensors_compressed"] == 2


def test_entering_an_active_compressor_again_raises():
    az = compressed_activations(schedule=1e-3)
    with az:
        with pytest.raises(RuntimeError, match="already active"):
            az.__enter__()
    with az:  # may be entered again once it has exited
        pass


def test_exception_inside_the_context_restores_torch_state():
    model, (x, _) = _cnn(), _batch()
    az = compressed_activations(model, schedule=1e-3, min_bytes=SMALL)
    with pytest.raises(ZeroDivisionError):
        with az:
            model(x)
            1 / 0
    assert not az.active
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    model(x).sum().backward()  # not through actzip any more
    assert az.live_bytes == (0, 0)
    # torch's own in-place check is back (it is off while any saved-tensor hooks are active)
    y = torch.randn(64, 64, requires_grad=True) * 2
    z = y.sin()
    y.add_(1)
    with pytest.raises(RuntimeError, match="which is output 0 of"):  # torch's wording
        z.sum().backward()


@pytest.mark.parametrize(
    "backend, with_model",
    [("aot_eager", False), ("aot_eager", True), pytest.param(
        "inductor", False,
        # torch's inductor import warns about its own deprecated internals
        marks=[pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")],
    )],
)
def test_torch_compile_goes_through_the_hooks(backend, with_model):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    x = torch.randn(64, 128)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend=backend)
    with compressed_activations(model if with_model else None, schedule=1e-6, min_bytes=SMALL) as az:
        compiled(x).square().sum().backward()
        az.step()
    # The compiled graph saves the input, the ReLU's output and its mask or the
    # pre-activation: every one goes through pack and unpack.
    assert az.history[0]["tensors_compressed"] + az.history[0]["masks_packed"] >= 2
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- failures


def test_codec_failure_keeps_the_tensor_warns_once_and_counts(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("codec out of order")

    monkeypatch.setattr(training, "compress", broken)
    monkeypatch.setattr(codec, "_compress_cpu_reusing", broken)  # the CPU path of training
    model, (x, y) = _cnn(), _batch()
    expected, _ = _gradients(copy.deepcopy(model), x, y)
    az = compressed_activations(model, schedule=1e-3, min_bytes=SMALL)
    with pytest.warns(RuntimeWarning, match="codec out of order") as caught:
        got, _ = _gradients(model, x, y, az)
        _gradients(model, x, y, az)
    assert len(caught) == 1
    _assert_close(got, expected, rtol=0, atol=0)
    az.step()
    assert az.history[0]["failures"] >= 8
    assert az.history[0]["peak_compressed_bytes"] == az.history[0]["peak_raw_bytes"]


# --------------------------------------------------------------------------- policy


def test_include_and_exclude_select_layers_by_type_and_name():
    model, (x, y) = _cnn(), _batch()
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL, exclude=nn.BatchNorm2d) as az:
        F.cross_entropy(model(x), y).backward()
        az.step()
    assert "1" not in az.history[0]["error_bounds"]
    assert az.history[0]["layer_raw_bytes"]["1"] == az.history[0]["layer_compressed_bytes"]["1"]
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL, include=["0", "3", nn.ReLU]) as az:
        F.cross_entropy(model(x), y).backward()
        az.step()
    assert set(az.history[0]["error_bounds"]) == {"0", "2", "4"}
    # Layer 3 (a convolution) saves the in-place ReLU's output: excluding it keeps that
    # storage uncompressed for both savers.
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL, include=["0", nn.ReLU]) as az:
        F.cross_entropy(model(x), y).backward()
        az.step()
    assert set(az.history[0]["error_bounds"]) == {"0", "4"}


def test_per_layer_bounds_from_a_mapping():
    model, (x, y) = _cnn(), _batch()
    with compressed_activations(model, schedule={nn.ReLU: 1e-2, "*": 1e-4}, min_bytes=SMALL) as az:
        F.cross_entropy(model(x), y).backward()
        az.step()
    requested = az.history[0]["requested_bounds"]
    assert requested["4"] == 1e-2
    assert requested["0"] == requested["1"] == 1e-4
    assert requested["2"] == 1e-4  # shared with convolution 3, whose bound is tighter


def test_shared_storage_takes_the_stricter_treatment():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(4, 3, 16, 16)
    with compressed_activations(model, schedule={"1": 1e-2, "2": 1e-5}, min_bytes=SMALL) as az:
        model(x).sum().backward()
        az.step()
    assert az.history[0]["requested_bounds"]["1"] == 1e-5
    with compressed_activations(model, schedule=1e-2, min_bytes=SMALL, exclude="2") as az:
        model(x).sum().backward()
        az.step()
    record = az.history[0]
    assert record["layer_compressed_bytes"]["1"] == record["layer_raw_bytes"]["1"]


def test_argument_validation():
    with pytest.raises(ValueError, match="needs the model"):
        compressed_activations(schedule=Adaptive())
    with pytest.raises(ValueError):
        compressed_activations(schedule=1e-3, mode="relative")
    with pytest.raises(ValueError):
        compressed_activations(schedule=1e-3, min_bytes=0)
    with pytest.raises(ValueError, match="pass the model"):
        compressed_activations(schedule=1e-3, exclude=nn.ReLU)
    with pytest.raises(TypeError):
        compressed_activations(schedule="1e-3")
    with pytest.raises(TypeError):
        compressed_activations(_cnn(), schedule=1e-3, include=3)


# --------------------------------------------------------------------------- schedules in training


def _train_batches(model, az, batches, lr=0.05):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with az:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            az.step(loss=loss.detach())


def _train(model, az, steps, seed=3):
    _train_batches(model, az, (_batch(seed + step) for step in range(steps)))


def test_gradual_schedule_bounds_reach_the_history():
    model = _cnn()
    az = compressed_activations(model, schedule=Gradual(1e-4, 1e-2, 0, 4), min_bytes=SMALL)
    _train(model, az, 6)
    requested = [record["requested_bounds"]["0"] for record in az.history]
    assert requested == [Gradual(1e-4, 1e-2, 0, 4).bound_at(t) for t in range(6)]
    ratios = [r["peak_raw_bytes"] / r["peak_compressed_bytes"] for r in az.history]
    assert ratios[-1] > ratios[0]


def test_compressor_state_dict_resumes_schedule():
    model = _cnn()
    az = compressed_activations(model, schedule=Gradual(1e-4, 1e-2, 0, 10), min_bytes=SMALL)
    _train(model, az, 4)
    state = az.state_dict()
    resumed = compressed_activations(model, schedule=Gradual(1e-4, 1e-2, 0, 10), min_bytes=SMALL)
    resumed.load_state_dict(state)
    _train(model, resumed, 1)
    assert resumed.history[0]["requested_bounds"]["0"] == Gradual(1e-4, 1e-2, 0, 10).bound_at(4)


def test_calibrate_measures_a_and_leaves_the_model_untouched():
    model, (x, y) = _cnn(channels=16), _batch(n=16)
    schedule = Adaptive(1e-2, interval=2)
    az = compressed_activations(model, schedule=schedule, min_bytes=SMALL)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    coefficients = az.calibrate(lambda: F.cross_entropy(model(x), y))
    assert coefficients and all(value > 0 and math.isfinite(value) for value in coefficients.values())
    assert schedule.a == pytest.approx(sorted(coefficients.values())[len(coefficients) // 2], rel=0.5)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert az.history == [] and az.live_bytes == (0, 0)


def test_adaptive_sets_per_layer_bounds_after_an_interval():
    model = _cnn(channels=16)
    schedule = Adaptive(1e-3, interval=2, beta=1e-3, max_change=1e6)
    az = compressed_activations(model, schedule=schedule, min_bytes=SMALL)
    x, y = _batch(n=8)
    az.calibrate(lambda: F.cross_entropy(model(x), y))
    _train(model, az, 2)
    assert set(schedule.bounds) >= {"0", "1", "2", "4"}
    bounds = [schedule.bounds[name] for name in ("0", "1", "2", "4")]
    assert len(set(bounds)) > 1
    assert all(schedule.min_bound <= b <= schedule.max_bound for b in bounds)
    _train(model, az, 1)
    assert az.history[-1]["requested_bounds"] == {name: schedule.bounds[name] for name in az.history[-1]["requested_bounds"]}


def test_memory_budget_keeps_peak_under_the_budget():
    model = _cnn(channels=16)
    meter = compressed_activations(model, schedule=None, min_bytes=SMALL)
    _train(model, meter, 1)
    raw_peak = meter.history[0]["peak_raw_bytes"]
    budget = raw_peak // 5
    az = compressed_activations(model, schedule=MemoryBudget(budget, initial=1e-5), min_bytes=SMALL)
    _train(model, az, 6)
    peaks = [r["peak_compressed_bytes"] for r in az.history]
    assert peaks[0] > budget
    assert all(peak <= budget for peak in peaks[2:])
    assert peaks[-1] > 0.6 * budget  # not needlessly loose


def test_cpu_tensors_reuse_their_choices_for_a_while_then_sample_again():
    model = _cnn(channels=16)
    az = compressed_activations(model, schedule=1e-2, mode="abs", min_bytes=SMALL)
    steps = training._REUSE_STEPS + 2
    _train_batches(model, az, [_batch(seed=3 + s, n=16) for s in range(steps)])
    compressed = [r["tensors_compressed"] for r in az.history]
    reused = [r["choices_reused"] for r in az.history]
    assert compressed[0] >= 3 and len(set(compressed)) == 1
    # Sampled at step 0, reused at the next _REUSE_STEPS steps, sampled again after.
    assert reused == [0] + [compressed[0]] * training._REUSE_STEPS + [0]
    ratios = [r["raw_bytes"] / r["compressed_bytes"] for r in az.history]
    assert min(ratios[1:-1]) > 0.9 * ratios[0]  # stale choices cost little size


def test_choices_are_sampled_again_when_the_bound_moves_or_the_shape_changes():
    model = _cnn(channels=16)
    bounds = iter([1e-2, 1e-2, 1e-4, 1e-4, 1.01e-4, 1.05e-4, 1.05e-4, 1.05e-4, 1.05e-4])

    class Steps(Constant):  # the bounds of a list, one a step
        def step(self, stats=None):
            super().step(stats)
            self.bound = next(bounds)

    schedule = Steps(next(bounds))
    az = compressed_activations(model, schedule=schedule, mode="abs", min_bytes=SMALL)
    batches = [_batch(seed=s, n=16) for s in range(6)] + [_batch(seed=6, n=12), _batch(seed=7, n=16)]
    _train_batches(model, az, batches)
    n = az.history[0]["tensors_compressed"]
    reused = [r["choices_reused"] for r in az.history]
    # step 2: the bound fell 100-fold; step 4: moved by 1%, within the drift allowed;
    # step 5: by 5% from where the choices were sampled, beyond it (a schedule that sizes
    # its bounds by what it measures must see fresh choices); step 6: another batch size
    # (other shapes); step 7: the choices of the batch of 16 were dropped when step 6 did
    # not use them.
    assert reused == [0, n, 0, n, n, 0, 0, 0]
    for record in az.history:
        assert record["failures"] == 0


def test_rel_mode_samples_again_after_the_values_range_moved():
    # A relative bound follows the values' range, known only once a tensor is coded: the
    # tensors whose range tripled at step 2 were coded with their old choices and are
    # sampled again at step 3, where the same run without the change reuses more.
    def reused(scale):
        model = _cnn(channels=16)
        az = compressed_activations(model, schedule=1e-2, mode="rel", min_bytes=SMALL)
        batches = [_batch(seed=s, n=16) for s in range(4)]
        batches[2] = (batches[2][0] * scale, batches[2][1])
        _train_batches(model, az, batches, lr=0.0)
        return [r["choices_reused"] for r in az.history]

    control, moved = reused(1.0), reused(3.0)
    assert control[:3] == moved[:3] and control[1] > 0
    assert moved[3] == control[3] - 2  # the input and the first conv's output; not past the BatchNorm


def test_choices_do_not_change_what_backward_gets():
    model, (x, y) = _cnn(), _batch()
    expected, _ = _gradients(copy.deepcopy(model), x, y)
    az = compressed_activations(model, schedule=1e-7, mode="abs", min_bytes=SMALL)
    for step in range(3):
        got, _ = _gradients(model, x, y, az)
        az.step()
        _assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert az.history[1]["choices_reused"] == az.history[1]["tensors_compressed"] > 0


# --------------------------------------------------------------------------- telemetry


def test_summary_csv_and_plot(tmp_path):
    model = _cnn()
    az = compressed_activations(model, schedule=Gradual(1e-4, 1e-2, 0, 3), min_bytes=SMALL)
    _train(model, az, 4)
    text = az.summary()
    assert "BatchNorm2d" in text and "ratio" in text and "peak held" in text
    az.to_csv(tmp_path / "history.csv")
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("step,layer,")
    assert len(lines) > 4 * 4
    pytest.importorskip("matplotlib")
    actzip.telemetry.plot(az.history, tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = az.history[0]
    for key in ("step", "raw_bytes", "compressed_bytes", "peak_raw_bytes", "peak_compressed_bytes",
                "error_bounds", "compress_seconds", "decompress_seconds", "loss"):
        assert key in record


def test_dropout_float_masks_are_packed_losslessly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.Dropout(0.3), nn.Linear(256, 8))
    x = torch.randn(64, 128)
    torch.manual_seed(5)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    with compressed_activations(model, schedule=1e-2, min_bytes=SMALL, exclude=nn.Linear) as az:
        model(x).square().sum().backward()
        az.step()
    record = az.history[0]
    assert record["masks_packed"] == 1
    assert record["layer_compressed_bytes"]["1"] == 64 * 256 // 8  # one bit a value
    # Only the mask went through actzip (the Linear layers are excluded): exact gradients.
    for g, e in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_float_mask_path_refuses_tensors_with_other_values():
    az = compressed_activations(nn.Dropout(), schedule=1e-3, min_bytes=SMALL)
    az.__enter__()
    try:
        values = torch.tensor([0.0, 2.0, -0.0, 2.0]).repeat(4096)
        assert az._pack_float_mask(values, "(model)", values.numel() * 4) is None  # -0.0
        three = torch.tensor([0.0, 2.0, 1.0, 2.0]).repeat(4096)
        assert az._pack_float_mask(three, "(model)", three.numel() * 4) is None
        mask = torch.tensor([0.0, 1.25, 1.25, 0.0]).repeat(4096).to(torch.bfloat16)
        saved = az._pack_float_mask(mask, "(model)", mask.numel() * 2)
        restored = az._unpack(saved)
        assert restored.dtype == torch.bfloat16 and torch.equal(restored, mask)
    finally:
        az.__exit__(None, None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("numel", [1, 13, 4096 * 8 + 5, 3 * 2**18 + 77])  # odd tails, several jobs
def test_float_masks_of_any_length_and_dtype_come_back_bit_for_bit(dtype, numel):
    az = compressed_activations(nn.Dropout(), schedule=1e-3, min_bytes=SMALL)
    az.__enter__()
    try:
        keep = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.3
        for scale in (1 / 0.7, -3.5, 0.0):
            mask = torch.where(keep, torch.tensor(scale), torch.tensor(0.0)).to(dtype)
            saved = az._pack_float_mask(mask, "(model)", mask.numel() * mask.element_size())
            assert saved is not None and saved.payload.numel() == (numel + 7) // 8
            restored = az._unpack(saved)
            assert restored.dtype == dtype and restored.shape == mask.shape
            assert torch.equal(restored.view(_int_view(dtype)), mask.view(_int_view(dtype)))
        for bad in (math.nan, math.inf, -math.inf):
            mask = torch.where(keep, torch.tensor(bad), torch.tensor(0.0)).to(dtype)
            if bool(keep.any()):
                assert az._pack_float_mask(mask, "(model)", mask.numel() * mask.element_size()) is None
    finally:
        az.__exit__(None, None, None)


def _int_view(dtype):
    return torch.int32 if dtype == torch.float32 else torch.int16


def test_with_a_model_only_its_parameters_count_as_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU())
    x = torch.randn(64, 256, requires_grad=True)  # a leaf input that needs grad
    with compressed_activations(model, schedule=1e-3, min_bytes=SMALL) as az:
        model(x).sum().backward()
        az.step()
    assert az.history[0]["tensors_compressed"] == 2  # the input and the ReLU output
    with compressed_activations(schedule=1e-3, min_bytes=SMALL) as az:
        model(x).sum().backward()
        az.step()
    assert az.history[0]["tensors_compressed"] == 1  # without a model the leaf is a parameter


def test_sparse_tensors_are_kept_as_they_are():
    torch.manual_seed(0)
    sparse = (torch.rand(128, 128) * (torch.rand(128, 128) > 0.9)).to_sparse().requires_grad_()
    dense = torch.randn(128, 64, requires_grad=True)
    torch.sparse.mm(sparse, dense * 1).sum().backward()
    expected = sparse.grad.to_dense().clone()
    sparse.grad = None
    with compressed_activations(schedule=1e-7, mode="abs", min_bytes=SMALL) as az:
        torch.sparse.mm(sparse, dense * 1).sum().backward()  # the dense operand is compressed
        az.step()
    torch.testing.assert_close(sparse.grad.to_dense(), expected, rtol=0, atol=1e-4)
    assert az.history[0]["tensors_compressed"] == 1
    assert az.history[0]["failures"] == 0


def test_the_gpu_path_reuses_each_layers_codebooks_and_keeps_gradients(monkeypatch):
    """The training path of the CUDA backend, run by the pipeline's host emulation: from
    the second step on, each layer's tensors are coded with the books of its previous one."""
    from actzip import _pipeline, codec

    calls = []
    real = codec._compress_pipeline_books

    def spy(x, bound, mode, checksum, ex, books):
        calls.append(books is not None)
        return real(x, bound, mode, checksum, ex, books)

    monkeypatch.setattr(training.ActivationCompressor, "_pipeline_exec", staticmethod(lambda view: _pipeline.Exec(None, 2)))
    monkeypatch.setattr(codec, "_compress_pipeline_books", spy)
    model, (x, y) = _cnn(), _batch()
    expected, _ = _gradients(copy.deepcopy(model), x, y)
    az = compressed_activations(model, schedule=1e-6, mode="rel", min_bytes=SMALL)
    for step in range(2):
        got, _ = _gradients(model, x, y, az)
        _assert_close(got, expected, rtol=1e-3, atol=1e-5)
        az.step()
        assert az.history[step]["tensors_compressed"] >= 4 and az.history[step]["failures"] == 0
    first = az.history[0]["tensors_compressed"]
    assert len(calls) >= 2 * first
    assert not any(calls[:first]) and all(calls[first:]), "step 1 must reuse every layer's books"


def test_a_damaged_stream_decoded_without_waiting_is_reported_by_step():
    """GPU decodes in backward do not wait for their status; step() reads them all."""
    from actzip import _pipeline, codec

    x = torch.relu(torch.randn(70000))
    c = codec._compress_pipeline(x, 1e-2, "rel", False, _pipeline.Exec(None, 1))
    damaged = c.data.clone()
    header = c._plan.info["header_bytes"]
    damaged[header : header + 16] = 0xFF  # the first chunk's header
    bad = codec.CompressedTensor(damaged, c._info, c.device, False, None, c._plan)
    _, good_status = codec._decompress_unchecked(c)
    _, bad_status = codec._decompress_unchecked(bad)
    az = compressed_activations(schedule=1e-2)
    az._unchecked += [good_status, bad_status]
    with pytest.raises(actzip.FormatError, match="chunk 0"):
        az.step()
    az._unchecked.append(good_status)
    az.step()  # nothing left to report
