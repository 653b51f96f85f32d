"""Error-bound schedules: which bound each layer's saved activations get, step by step.

A schedule is a plain object with explicit state, modelled on ``torch.optim.lr_scheduler``:

- :meth:`Schedule.error_bound` gives the bound for one layer at the current step, in the
  units of the compressor's ``mode`` (``"rel"``: a fraction of each tensor's value range;
  ``"abs"``: an absolute bound), or ``None`` to keep that layer's tensors uncompressed.
- :meth:`Schedule.step` moves to the next step. The compressor passes the statistics it
  measured on the step just finished (:class:`StepStats`); schedules that do not need them
  ignore them.
- :meth:`Schedule.state_dict` and :meth:`Schedule.load_state_dict` hold everything the
  bounds depend on, so a run resumed from a checkpoint continues with the same bounds.

The bound actually used is written into every compressed tensor; decompression never asks
the schedule.

Schedules here: :class:`Constant`, :class:`Gradual` (Zhu & Gupta's polynomial schedule
taken in log space), :class:`Adaptive` (COMET's gradient-error controller),
:class:`MemoryBudget` (per-layer bounds that keep the saved activations under a byte
budget) and :class:`PerLayer` (a different schedule or bound per layer).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "Schedule",
    "Constant",
    "Gradual",
    "Adaptive",
    "MemoryBudget",
    "PerLayer",
    "LayerStats",
    "StepStats",
    "as_schedule",
    "layer_matches",
    "adopt_producer_bounds",
]


# ---------------------------------------------------------------------------------------
# What the compressor measures on each step
# ---------------------------------------------------------------------------------------

@dataclass
class LayerStats:
    """What one layer's saved activations looked like on one step.

    Only tensors the codec compressed are counted here (tensors kept as they are, bit-packed
    masks and tensors shared with an earlier saver are not).
    """

    #: elements compressed (summed over the layer's tensors)
    numel: int = 0
    #: non-zero elements among them (always when the encoder reports its zero count,
    #: otherwise only on steps where the schedule asked for statistics; None if unknown)
    nonzero: Optional[int] = None
    #: bytes before compression
    raw_bytes: int = 0
    #: bytes of the compressed streams
    compressed_bytes: int = 0
    #: the bound asked of the codec, in the compressor's mode (the largest, if several)
    requested_bound: Optional[float] = None
    #: the absolute bound the codec honoured (the largest over the layer's tensors)
    error_bound: Optional[float] = None
    #: the largest value range (max - min) over the layer's tensors; known in "rel" mode
    value_range: Optional[float] = None
    #: standard deviation of the layer's own parameter gradients (statistics steps only;
    #: None for a layer without parameters)
    grad_std: Optional[float] = None


@dataclass
class StepStats:
    """Everything the compressor measured on one step, passed to :meth:`Schedule.step`."""

    #: the step just finished (0 for the first)
    step: int
    #: "abs" or "rel": the units of every requested bound
    mode: str = "rel"
    #: the loss passed to ``ActivationCompressor.step(loss=...)``: a float, a 0-d tensor
    #: (left where it was computed, so reading it does not synchronize), or None
    loss: Any = None
    #: layer name -> statistics
    layers: Dict[str, LayerStats] = field(default_factory=dict)
    #: module names in the order the forward pass first entered them (with a model)
    layer_order: List[str] = field(default_factory=list)
    #: names of the modules that own parameters (with a model)
    weighted_layers: List[str] = field(default_factory=list)
    #: peak of the bytes held for backward: everything kept, packed and compressed
    peak_compressed_bytes: int = 0
    #: the same peak counted before compression
    peak_raw_bytes: int = 0
    #: whether non-zero counts and gradient spreads were collected on this step
    has_statistics: bool = False
    #: layer -> layers whose tensors it saved again (a storage packed once, shared): the
    #: stricter of the two bounds applies to such a tensor
    shared_from: Dict[str, List[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return value


def _step_index(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def layer_matches(layer: str, module_type: Optional[type], spec: Any) -> bool:
    """Whether a layer matches ``spec``: a module class (instances of it and of its
    subclasses match), a name pattern in :mod:`fnmatch` syntax (``"layer1.*"``,
    ``"*.attn.*"``), or a tuple or list of such specs (any may match)."""
    if isinstance(spec, (tuple, list)):
        return any(layer_matches(layer, module_type, item) for item in spec)
    if isinstance(spec, type):
        return module_type is not None and issubclass(module_type, spec)
    if isinstance(spec, str):
        return fnmatch.fnmatchcase(layer, spec)
    raise TypeError(f"a layer is selected by a module type or a name pattern, not {spec!r}")


def adopt_producer_bounds(bounds: Dict[str, float], stats: StepStats) -> None:
    """Give each layer that only saves tensors other layers saved first (a convolution
    whose input is the in-place ReLU's output) the loosest bound of those layers, so that
    the stricter-bound rule for shared tensors never overrides the bound a schedule chose
    for the layer that owns them."""
    for layer, producers in stats.shared_from.items():
        own = stats.layers.get(layer)
        if own is not None and own.numel > 0:
            continue
        chosen = [bounds[producer] for producer in producers if producer in bounds]
        if chosen:
            bounds[layer] = max(chosen)


class Schedule:
    """Base class. Subclasses override :meth:`error_bound` and, if their bound moves,
    :meth:`step`; their state lives in attributes listed by :attr:`_state_keys`."""

    #: attribute names saved by state_dict (subclasses extend this)
    _state_keys: Tuple[str, ...] = ("last_step",)

    def __init__(self) -> None:
        #: the step whose bounds :meth:`error_bound` gives now (0 before the first step())
        self.last_step = 0

    def error_bound(self, layer: str, module_type: Optional[type] = None) -> Optional[float]:
        """The bound for ``layer`` at the current step, or None to leave it uncompressed."""
        raise NotImplementedError

    def step(self, stats: Optional[StepStats] = None) -> None:
        """Move to the next step; ``stats`` describes the step just finished."""
        self.last_step += 1

    def wants_statistics(self) -> bool:
        """Whether the step about to run should collect non-zero counts and gradient
        spreads (a pass over each compressed tensor and over the parameter gradients)."""
        return False

    def needs_model(self) -> bool:
        """Whether the schedule needs per-layer names and parameters (a ``model``)."""
        return False

    def calibrate(self, coefficients: Mapping[str, float]) -> None:
        """Receive calibration measurements (see :class:`Adaptive`); ignored by default."""

    def state_dict(self) -> Dict[str, Any]:
        """The schedule's state as plain Python values (safe for ``torch.save``)."""
        return {key: _copy_state(getattr(self, key)) for key in self._state_keys}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        missing = [key for key in self._state_keys if key not in state]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}")
        for key in self._state_keys:
            setattr(self, key, _copy_state(state[key]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_step={self.last_step})"


def _copy_state(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_state(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_state(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------
# Constant and Gradual
# ---------------------------------------------------------------------------------------

class Constant(Schedule):
    """The same bound for every layer at every step."""

    _state_keys = ("last_step", "bound")

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.bound = _positive("bound", bound)

    def error_bound(self, layer: str, module_type: Optional[type] = None) -> Optional[float]:
        return self.bound

    def __repr__(self) -> str:
        return f"Constant({self.bound:g})"


class Gradual(Schedule):
    """The bound moves from ``initial`` to ``final`` between ``begin_step`` and ``end_step``
    on Zhu & Gupta's polynomial schedule (2017), taken in log space:

        log b_t = log b_f + (log b_i - log b_f) * (1 - (t - t0) / (t1 - t0)) ** power

    for ``t0 <= t <= t1``; ``b_i`` before ``t0`` and ``b_f`` after ``t1``. With ``power=3``
    the bound first grows quickly (in orders of magnitude), then slows as it nears
    ``final``, so the network adapts to the coarsest bounds over the longest stretch.
    The bound changes only every ``frequency`` steps (counted from ``begin_step``).
    ``final`` may be smaller than ``initial`` (a schedule that tightens).
    """

    _state_keys = ("last_step",)

    def __init__(
        self,
        initial: float,
        final: float,
        begin_step: int,
        end_step: int,
        *,
        frequency: int = 1,
        power: float = 3,
    ) -> None:
        super().__init__()
        self.initial = _positive("initial", initial)
        self.final = _positive("final", final)
        self.begin_step = _step_index("begin_step", begin_step)
        self.end_step = _step_index("end_step", end_step)
        if self.end_step <= self.begin_step:
            raise ValueError(
                f"end_step ({end_step}) must be greater than begin_step ({begin_step})"
            )
        self.frequency = _step_index("frequency", frequency, minimum=1)
        self.power = _positive("power", power)

    def bound_at(self, step: int) -> float:
        """The bound of step ``step`` (a pure function of the step)."""
        if step <= self.begin_step:
            return self.initial
        if step >= self.end_step:
            return self.final
        elapsed = step - self.begin_step
        elapsed -= elapsed % self.frequency
        if elapsed == 0:
            return self.initial
        remaining = 1.0 - elapsed / (self.end_step - self.begin_step)
        log_final = math.log(self.final)
        return math.exp(log_final + (math.log(self.initial) - log_final) * remaining**self.power)

    def error_bound(self, layer: str, module_type: Optional[type] = None) -> Optional[float]:
        return self.bound_at(self.last_step)

    def __repr__(self) -> str:
        return (
            f"Gradual({self.initial:g}, {self.final:g}, {self.begin_step}, {self.end_step}, "
            f"frequency={self.frequency}, power={self.power:g}; step {self.last_step}: "
            f"{self.bound_at(self.last_step):.3g})"
        )


# ---------------------------------------------------------------------------------------
# Adaptive: COMET's controller
# ---------------------------------------------------------------------------------------

class Adaptive(Schedule):
    """Per-layer bounds from the gradient error each layer can tolerate (COMET, Jin et al.,
    VLDB 2022).

    Every ``interval`` steps, on the last step of the interval, the compressor collects for
    each layer ``l``: the number ``N`` of elements it saved and compressed, their non-zero
    fraction ``R``, and the standard deviation of the layer's own parameter gradients; the
    loss passed to ``step(loss=...)`` is averaged over the interval (``L``). The new bound
    is

        eb_l = sigma_l / (a * L * sqrt(N_l * R_l)),    sigma_l = beta * std(grad W_l)

    an absolute bound: the gradient error that compressing the layer's activations with
    ``eb_l`` is predicted to cause is ``beta`` times the spread of the gradient itself. In
    ``"rel"`` mode it is divided by the largest value range the layer saved (measured by the
    codec), so it becomes a fraction of the range. It is then clamped to
    ``[min_bound, max_bound]`` and may change by at most a factor ``max_change`` per update.

    A layer without parameters (a ReLU, a dropout, the softmax of attention) takes
    ``sigma`` from the next layer with parameters in forward order, the layer whose weight
    gradient its saved output feeds; failing that, from the previous one. A layer that only
    saves again what another layer saved first (a convolution whose input is an in-place
    ReLU's output) takes that layer's bound (:func:`adopt_producer_bounds`).

    The coefficient ``a`` relates the activation error to the weight-gradient error. It is
    measured, not assumed: ``ActivationCompressor.calibrate(closure)`` runs one batch
    twice with the same random state, once uncompressed and once with every layer
    compressed at a probe bound, and for each layer divides the measured spread of the
    gradient difference, ``std(G_compressed - G_exact)``, by ``L * eb * sqrt(N * R)``;
    ``a`` is the median over layers. Because every layer is compressed at once, each layer's
    measured error also contains what the other layers' errors add, so ``a`` errs high and
    the bounds err on the tight side. Pass ``a=`` to reuse a coefficient measured before
    (it is also part of the state dict). Until ``a`` is known the bounds stay at
    ``initial``, with one warning at the first update.
    """

    _state_keys = ("last_step", "a", "bounds", "loss_sum", "loss_count", "warned_uncalibrated")
    # loss_sum may hold a tensor between updates (a loss left on an accelerator)

    def __init__(
        self,
        initial: float = 1e-3,
        *,
        interval: int = 100,
        beta: float = 0.1,
        a: Optional[float] = None,
        min_bound: float = 1e-5,
        max_bound: float = 5e-2,
        max_change: float = 10.0,
    ) -> None:
        super().__init__()
        self.initial = _positive("initial", initial)
        self.interval = _step_index("interval", interval, minimum=1)
        self.beta = _positive("beta", beta)
        self.a: Optional[float] = None if a is None else _positive("a", a)
        self.min_bound = _positive("min_bound", min_bound)
        self.max_bound = _positive("max_bound", max_bound)
        if self.min_bound > self.max_bound:
            raise ValueError(f"min_bound ({min_bound}) must not exceed max_bound ({max_bound})")
        self.max_change = _positive("max_change", max_change)
        if self.max_change < 1.0:
            raise ValueError(f"max_change must be at least 1, got {max_change}")
        #: layer name -> current bound (layers not listed use ``initial``)
        self.bounds: Dict[str, float] = {}
        self.loss_sum = 0.0
        self.loss_count = 0
        self.warned_uncalibrated = False
        #: per-layer coefficients of the last calibration (diagnostics; not part of the state)
        self.calibration: Dict[str, float] = {}

    def needs_model(self) -> bool:
        return True

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["loss_sum"] = float(state["loss_sum"])
        return state

    def error_bound(self, layer: str, module_type: Optional[type] = None) -> Optional[float]:
        return self.bounds.get(layer, self.initial)

    def wants_statistics(self) -> bool:
        return (self.last_step + 1) % self.interval == 0

    def calibrate(self, coefficients: Mapping[str, float]) -> None:
        """Set ``a`` to the median of per-layer measurements (see the class docstring)."""
        values = sorted(
            float(v) for v in coefficients.values() if math.isfinite(float(v)) and float(v) > 0
        )
        if not values:
            raise ValueError("Adaptive.calibrate: no usable measurement (every layer gave 0)")
        middle = len(values) // 2
        self.a = values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])
        self.calibration = dict(coefficients)

    def step(self, stats: Optional[StepStats] = None) -> None:
        loss = None if stats is None else stats.loss
        if loss is not None:
            if hasattr(loss, "detach"):  # a tensor: summed where it lives, read at the update
                self.loss_sum = loss.detach().double() + self.loss_sum
            else:
                self.loss_sum += float(loss)
            self.loss_count += 1
        if stats is not None and stats.has_statistics:
            self._update(stats)
        super().step(stats)

    def _update(self, stats: StepStats) -> None:
        if self.loss_count == 0:
            return  # no loss given: the formula cannot be evaluated
        mean_loss = float(self.loss_sum) / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        if not math.isfinite(mean_loss):
            return  # a diverged step: keep the bounds
        if self.a is None:
            if not self.warned_uncalibrated:
                self.warned_uncalibrated = True
                warnings.warn(
                    "Adaptive: the coefficient `a` is not calibrated, so the bounds stay at "
                    f"initial={self.initial:g}; call ActivationCompressor.calibrate(closure) "
                    "once, or pass a= measured before",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        if mean_loss <= 0:
            return
        sigmas = gradient_spread_by_layer(stats)
        for layer, layer_stats in stats.layers.items():
            sigma = sigmas.get(layer)
            if sigma is None or layer_stats.numel == 0 or not layer_stats.nonzero:
                continue
            eb = self.beta * sigma / (self.a * mean_loss * math.sqrt(layer_stats.nonzero))
            if stats.mode == "rel":
                if not layer_stats.value_range:
                    continue
                eb /= layer_stats.value_range
            previous = self.bounds.get(layer, self.initial)
            eb = min(max(eb, previous / self.max_change), previous * self.max_change)
            self.bounds[layer] = min(max(eb, self.min_bound), self.max_bound)
        adopt_producer_bounds(self.bounds, stats)

    def __repr__(self) -> str:
        a = "uncalibrated" if self.a is None else f"{self.a:.3g}"
        return f"Adaptive(initial={self.initial:g}, interval={self.interval}, beta={self.beta:g}, a={a})"


def gradient_spread_by_layer(stats: StepStats) -> Dict[str, float]:
    """Each layer's gradient standard deviation: its own if it has parameters, else that of
    the next layer with parameters in forward order (the consumer of its output), else the
    previous one. Layers absent from ``stats.layer_order`` get nothing."""
    order = list(stats.layer_order)
    own = {
        name: s.grad_std
        for name, s in stats.layers.items()
        if s.grad_std is not None and s.grad_std > 0
    }
    # Layers with parameters but without compressed tensors of their own still carry a
    # gradient spread; the compressor reports them with numel == 0.
    result: Dict[str, float] = {}
    for index, name in enumerate(order):
        if name in own:
            result[name] = own[name]
            continue
        following = next((own[n] for n in order[index + 1:] if n in own), None)
        if following is None:
            following = next((own[n] for n in reversed(order[:index]) if n in own), None)
        if following is not None:
            result[name] = following
    for name, value in own.items():
        result.setdefault(name, value)
    return result


# ---------------------------------------------------------------------------------------
# MemoryBudget
# ---------------------------------------------------------------------------------------

class MemoryBudget(Schedule):
    """Per-layer bounds that keep the peak of the saved activations under ``max_bytes``.

    After each step, each layer's compressed size is modelled from what was measured on
    the steps before as a function of its bound ``b`` (in the compressor's mode):

        C_l(b) = C_l(b0) - k_l * log2(b / b0)

    with ``b0`` the bound of the last step. ``k_l``, the bytes saved per doubling of the
    bound, starts from the rate of a uniform quantizer with an entropy coder, one bit per
    non-zero element per doubling (``0.9 * nonzero / 8`` bytes; all elements if the count
    is unknown), and is refined by the slope between the last two bounds the layer saw when
    they differ by at least half a doubling (kept within 0.25 to 1.5 times that rate). Bytes
    the bounds do not change (tensors kept uncompressed, bit-packed masks) are the measured
    peak minus the compressed bytes. The model's misses are tracked too: when a step held
    more than predicted, later predictions are scaled up by that factor (an exponential
    average, never below 1).

    The bounds then minimize the total squared error ``sum_l N_l b_l**2`` under
    ``sum_l C_l(b_l) <= margin * max_bytes - fixed`` (``N_l`` elements per layer), which
    gives ``b_l`` proportional to ``sqrt(k_l / N_l)``: layers whose size grows slowly as the
    bound tightens (sparse, post-ReLU) get tighter bounds. Each bound is clamped to
    ``[min_bound, max_bound]``. When even ``max_bound`` everywhere is predicted to exceed
    the budget, every layer gets ``max_bound``; if a step at ``max_bound`` then measures
    over the budget, a ``RuntimeWarning`` says so, once until the budget is met again.

    The first step uses ``initial`` for every layer; layers first seen later start at the
    geometric mean of the current bounds.
    """

    _state_keys = (
        "last_step", "bounds", "observations", "over_budget", "default_bound",
        "predicted_bytes", "miss_factor",
    )

    def __init__(
        self,
        max_bytes: int,
        *,
        initial: float = 1e-3,
        min_bound: float = 1e-5,
        max_bound: float = 5e-2,
        margin: float = 0.9,
    ) -> None:
        super().__init__()
        self.max_bytes = int(_positive("max_bytes", max_bytes))
        self.initial = _positive("initial", initial)
        self.min_bound = _positive("min_bound", min_bound)
        self.max_bound = _positive("max_bound", max_bound)
        if self.min_bound > self.max_bound:
            raise ValueError(f"min_bound ({min_bound}) must not exceed max_bound ({max_bound})")
        self.margin = _positive("margin", margin)
        if self.margin > 1:
            raise ValueError(f"margin must be in (0, 1], got {margin}")
        self.default_bound = min(max(self.initial, self.min_bound), self.max_bound)
        #: layer name -> bound for the current step
        self.bounds: Dict[str, float] = {}
        #: layer name -> [[log2 bound, compressed bytes, numel, nonzero], ...], the last two
        #: with distinct bounds
        self.observations: Dict[str, List[List[float]]] = {}
        self.over_budget = False
        #: compressed bytes the model predicted for the current step (0: no prediction)
        self.predicted_bytes = 0.0
        #: how much the model under-predicted lately (>= 1)
        self.miss_factor = 1.0

    def error_bound(self, layer: str, module_type: Optional[type] = None) -> Optional[float]:
        return self.bounds.get(layer, self.default_bound)

    def step(self, stats: Optional[StepStats] = None) -> None:
        if stats is not None:
            self._update(stats)
        super().step(stats)

    def _record(self, layer: str, point: List[float]) -> None:
        history = self.observations.setdefault(layer, [])
        if history and abs(history[-1][0] - point[0]) < 0.5:
            history[-1] = point  # about the same bound: keep the newest size
        else:
            history.append(point)
            del history[:-2]

    def _slope(self, layer: str) -> float:
        """Bytes saved per doubling of the bound (k_l > 0)."""
        history = self.observations[layer]
        numel, nonzero = history[-1][2], history[-1][3]
        prior = 0.9 * (nonzero if nonzero >= 0 else numel) / 8.0
        prior = max(prior, 1e-3 * numel / 8.0)  # an all-zero tensor still has a cost to model
        if len(history) == 2:
            (x0, c0, n0, _), (x1, c1, n1, _) = history
            if n0 == n1 and abs(x1 - x0) >= 0.5:
                fitted = (c0 - c1) / (x1 - x0)
                return min(max(fitted, 0.25 * prior), 1.5 * prior)
        return prior

    def _update(self, stats: StepStats) -> None:
        compressed_total = 0
        layers: List[Tuple[str, float, float, float, int]] = []  # name, x0, c0, k, numel
        for name, layer_stats in stats.layers.items():
            if layer_stats.numel == 0 or layer_stats.requested_bound is None:
                continue
            compressed_total += layer_stats.compressed_bytes
            x0 = math.log2(layer_stats.requested_bound)
            nonzero = -1 if layer_stats.nonzero is None else int(layer_stats.nonzero)
            self._record(name, [x0, float(layer_stats.compressed_bytes), int(layer_stats.numel), nonzero])
            layers.append(
                (name, x0, float(layer_stats.compressed_bytes), self._slope(name), layer_stats.numel)
            )
        if not layers:
            return
        if self.predicted_bytes > 0:
            miss = compressed_total / self.predicted_bytes
            self.miss_factor = max(1.0, 0.5 * self.miss_factor + 0.5 * miss)
        fixed = max(0, stats.peak_compressed_bytes - compressed_total)
        target = (self.margin * self.max_bytes - fixed) / self.miss_factor
        x_min, x_max = math.log2(self.min_bound), math.log2(self.max_bound)
        floor_fraction = 0.05  # no stream is modelled below 5 % of its current size

        def predicted(log_bounds: Sequence[float]) -> float:
            total = 0.0
            for (name, x0, c0, k, numel), x in zip(layers, log_bounds):
                total += max(c0 - k * (x - x0), floor_fraction * c0)
            return total

        def allocate(log_lambda: float) -> List[float]:
            # minimum of sum N b^2 + lambda sum C(b): b_l^2 = lambda k_l / (2 ln2 N_l)
            out = []
            for name, x0, c0, k, numel in layers:
                x = 0.5 * (log_lambda + math.log2(k / max(numel, 1)) - math.log2(2 * math.log(2)))
                out.append(min(max(x, x_min), x_max))
            return out

        loosest = [x_max] * len(layers)
        at_loosest = all(x0 >= x_max - 1e-9 for _, x0, _, _, _ in layers)
        measured_over = at_loosest and stats.peak_compressed_bytes > self.max_bytes
        if target <= 0 or predicted(loosest) > target or measured_over:
            new_bounds = loosest
            # Warn on a measurement, not a prediction: the model is least sure far from
            # the bounds it has seen.
            if measured_over and not self.over_budget:
                self.over_budget = True
                warnings.warn(
                    f"MemoryBudget: the saved activations cannot be kept under "
                    f"{self.max_bytes} bytes with bounds up to max_bound={self.max_bound:g} "
                    f"(peak {stats.peak_compressed_bytes} bytes at max_bound, {fixed} of them "
                    "not compressible); staying at max_bound",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            self.over_budget = False
            # Bisection on log2(lambda): a larger lambda gives looser bounds, fewer bytes.
            low, high = -200.0, 200.0
            for _ in range(60):
                middle = 0.5 * (low + high)
                if predicted(allocate(middle)) > target:
                    low = middle
                else:
                    high = middle
            new_bounds = allocate(high)
        self.predicted_bytes = predicted(new_bounds)
        self.bounds = {layer[0]: 2.0**x for layer, x in zip(layers, new_bounds)}
        self.default_bound = 2.0 ** (sum(new_bounds) / len(new_bounds))
        adopt_producer_bounds(self.bounds, stats)

    def __repr__(self) -> str:
        return f"MemoryBudget({self.max_bytes}, min_bound={self.min_bound:g}, max_bound={self.max_bound:g})"


# ---------------------------------------------------------------------------------------
# PerLayer
# ---------------------------------------------------------------------------------------

_Rule = Union[None, float, Schedule]


class PerLayer(Schedule):
    """A bound or a schedule per group of layers.

    ``rules`` maps a selector (a name pattern such as ``"layer4.*"``, a module class such as
    ``torch.nn.LayerNorm``, or a tuple of them) to a bound, a :class:`Schedule`, or ``None``
    (leave those layers uncompressed). The first matching rule wins; layers that match none
    use ``default`` (a bound, a schedule, or None). Every schedule inside steps with this
    one and receives the same statistics.

        PerLayer({torch.nn.LayerNorm: None, "*.attn.*": 1e-3}, default=Gradual(1e-4, 1e-2, 0, 1000))
    """

    def __init__(self, rules: Mapping[Any, _Rule], default: _Rule = None) -> None:
        super().__init__()
        self.rules: List[Tuple[Any, Optional[Schedule]]] = []
        for selector, rule in rules.items():
            layer_matches("", None, selector)  # validates the selector
            self.rules.append((selector, None if rule is None else as_schedule(rule)))
        self.default: Optional[Schedule] = None if default is None else as_schedule(default)
        self._cache: Dict[Tuple[str, Optional[type]], Optional[Schedule]] = {}

    def _children(self) -> List[Schedule]:
        """Every schedule inside, each once even if several rules share it."""
        children: List[Schedule] = []
        for rule in [rule for _, rule in self.rules] + [self.default]:
            if rule is not None and all(rule is not child for child in children):
                children.append(rule)
        return children

    def _rule_for(self, layer: str, module_type: Optional[type]) -> Optional[Schedule]:
        key = (layer, module_type)
        if key not in self._cache:
            chosen = self.default
            for selector, rule in self.rules:
                if layer_matches(layer, module_type, selector):
                    chosen = rule
                    break
            self._cache[key] = chosen
        return self._cache[key]

    def error_bound(self, layer: str, module_type: Optional[type] = None) -> Optional[float]:
        rule = self._rule_for(layer, module_type)
        return None if rule is None else rule.error_bound(layer, module_type)

    def step(self, stats: Optional[StepStats] = None) -> None:
        for child in self._children():
            child.step(stats)
        super().step(stats)

    def wants_statistics(self) -> bool:
        return any(child.wants_statistics() for child in self._children())

    def needs_model(self) -> bool:
        return bool(self.rules) or any(child.needs_model() for child in self._children())

    def calibrate(self, coefficients: Mapping[str, float]) -> None:
        for child in self._children():
            child.calibrate(coefficients)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_step": self.last_step,
            "children": [child.state_dict() for child in self._children()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        children = self._children()
        if len(state.get("children", ())) != len(children):
            raise ValueError("PerLayer.load_state_dict: the state has a different set of rules")
        self.last_step = int(state["last_step"])
        for child, child_state in zip(children, state["children"]):
            child.load_state_dict(child_state)

    def __repr__(self) -> str:
        rules = ", ".join(f"{selector!r}: {rule!r}" for selector, rule in self.rules)
        return f"PerLayer({{{rules}}}, default={self.default!r})"


def as_schedule(schedule: Any) -> Schedule:
    """A :class:`Schedule` from a schedule, a plain number (a :class:`Constant` bound) or a
    mapping of layer selectors to bounds or schedules (a :class:`PerLayer`, whose entry
    under the key ``"*"``, if any, is the default)."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        return Constant(schedule)
    if isinstance(schedule, Mapping):
        rules = dict(schedule)
        default = rules.pop("*", None)
        return PerLayer(rules, default=default)
    raise TypeError(
        "schedule must be a Schedule, a positive number or a mapping of layer selectors to "
        f"bounds, not {type(schedule).__name__}"
    )
