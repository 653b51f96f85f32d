"""Training with compressed activations: the autograd integration.

:func:`compressed_activations` returns an :class:`ActivationCompressor`, a context manager
built on the public :class:`torch.autograd.graph.saved_tensors_hooks`. While it is active,
every tensor autograd saves for backward goes through its pack hook:

- floating-point tensors (float32, float16, bfloat16) of at least ``min_bytes`` bytes that
  are not parameters or buffers (nor casts or views of parameters, as autocast makes) are
  compressed within the bound the schedule gives their layer; backward gets them back
  decompressed, with their shape, dtype, device and (for dense layouts) strides;
- bool tensors of at least ``min_bytes`` bytes (masks) are packed losslessly to one bit a
  value, and so is the scaled float mask a dropout module saves on the CPU (every element
  +0.0 or ``1 / (1 - p)``; checked, else it is compressed like any other tensor);
- everything else (integer tensors, small tensors, parameters) is kept as it is.

Parameters are recognised by their storage (with a model: its parameters and buffers) and
by their autograd history: a tensor whose ``grad_fn`` leads through casts and views to the
accumulator of a parameter (autocast's low-precision weight copies, a transposed weight)
holds the parameter's values and is kept. Without a model, any leaf tensor that requires
grad counts as a parameter.

A storage saved several times in one forward (the output of an in-place ReLU is also the
input the next convolution saves) is compressed once and shared: the cache is keyed on the
storage, the storage offset, shape, strides, dtype and version counter, and an entry only
matches while the storage it was made from is alive. When two savers ask for different
treatments, the stricter wins for both (a tighter bound, or no compression at all).

Torch does not check saved tensors for in-place modification while saved-tensor hooks
are active, so the hooks do it themselves: the version counter is recorded at pack and
compared at unpack, and a mismatch raises torch's usual ``RuntimeError`` (for a compressed
tensor, as long as the original tensor object is still alive to be checked).

If compressing a tensor fails for any reason, the tensor is kept uncompressed, one
``RuntimeWarning`` is given, and the failure is counted in :attr:`ActivationCompressor.history`.

Memory accounting (what ``peak_raw_bytes`` and ``peak_compressed_bytes`` mean): each pack
adds the bytes it holds to a live counter, and the holder's finalizer subtracts them when
autograd releases it (after backward used it, or when the graph is dropped). The "raw"
counter adds what autograd would hold without actzip (``numel * element_size`` of each
distinct saved tensor, parameters excluded); the "compressed" counter adds what is held
instead (stream bytes, packed bits, or the tensor itself when it is kept). Peaks are taken
over each step. Tensors decompressed during backward live only while backward uses them
and are not counted.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import telemetry
from . import _core, _pipeline, codec
from .codec import CompressedTensor, compress, decompress
from .schedule import LayerStats, Schedule, StepStats, as_schedule, gradient_spread_by_layer, layer_matches

__all__ = ["ActivationCompressor", "compressed_activations"]

_FLOAT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
_KEPT, _COMPRESSED, _BITS = 0, 1, 2
_BITS_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}

# A CPU tensor's sampled predictors and codebooks serve it for this many later steps, while
# the bound its layer asks for stays within a factor _REUSE_REQUEST_DRIFT of the one they
# were sampled at and, in "rel" mode, the absolute bound (which follows the values' range)
# within _REUSE_RANGE_DRIFT. Stale choices cost a little size, and a schedule that sets
# bounds from the sizes it measures (MemoryBudget) must see what fresh choices give at the
# bound it asked for: with choices kept across bound changes of up to 25%, its sizes were
# biased, its bounds swung, and the transformer's loss rose 35% instead of 2%.
# (benchmarks/bench_training.py --methods baseline,gradual,gradual_sample_always compares.)
_REUSE_STEPS = 8
_REUSE_REQUEST_DRIFT = 1.02
_REUSE_RANGE_DRIFT = 1.25

#: Layer names for tensors saved outside any named module.
ROOT_LAYER = "(model)"      # inside the model's own forward, outside its submodules
OUTSIDE_LAYER = "(outside)"  # outside the model (the loss, for instance)
ALL_LAYER = "(all)"          # no model given: every tensor belongs to one group

# Autograd nodes that lead from a parameter to a tensor holding the same values in another
# form (autocast casts, transposes, views): tensors behind them count as parameters.
_PARAMETER_VIEW_NODES = frozenset(
    {
        "ToCopyBackward0",
        "TBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "ExpandBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "AliasBackward0",
        "CloneBackward0",
        "ReshapeAliasBackward0",
        "SliceBackward0",
        "SelectBackward0",
    }
)


def _inplace_error(tensor: torch.Tensor, expected_version: int) -> RuntimeError:
    """The error torch raises when a saved tensor was changed in place before backward."""
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: [{tensor.type()} {list(tensor.shape)}] is at version "
        f"{tensor._version}; expected version {expected_version} instead. Hint: the tensor "
        "was saved for backward (and compressed by actzip) before the in-place change."
    )


class _Accounting:
    """Live and peak bytes held for backward; shared by the holders so their finalizers
    do not keep the compressor alive."""

    __slots__ = ("live_raw", "live_stored", "peak_raw", "peak_stored")

    def __init__(self) -> None:
        self.live_raw = 0
        self.live_stored = 0
        self.peak_raw = 0
        self.peak_stored = 0

    def add(self, raw: int, stored: int) -> None:
        self.live_raw += raw
        self.live_stored += stored
        if self.live_raw > self.peak_raw:
            self.peak_raw = self.live_raw
        if self.live_stored > self.peak_stored:
            self.peak_stored = self.live_stored

    def restart_peaks(self) -> None:
        self.peak_raw = self.live_raw
        self.peak_stored = self.live_stored


class _Saved:
    """What the pack hook returns: one saved tensor, kept, compressed or bit-packed."""

    __slots__ = (
        "kind",          # _KEPT, _COMPRESSED or _BITS
        "payload",       # the tensor, its CompressedTensor, or its packed bits
        "version",       # the tensor's version counter when saved
        "source_ref",    # weakref to the saved tensor (version check on unpack), or None
        "storage_ref",   # weakref to its storage: a cache entry is valid while it is alive
        "layout",        # how to rebuild the original view from the decoded one, or None
        "shape",         # original shape (bit-packed masks)
        "layer",         # the layer that saved it first
        "requested",     # the bound asked of the codec (compressed entries)
        "raw_bytes",     # bytes counted as raw in the accounting
        "stored_bytes",  # bytes counted as held in the accounting
        "accounting",    # the _Accounting to update on release, or None
        "saves",         # how many saves share this entry
        "pending",       # unpacks left before the decoded tensor may be dropped
        "unpacked",      # the decoded tensor, kept while other savers still need it
        "nonzero",       # non-zero elements (compressed, on statistics steps), or None
        "scale",         # a float mask's non-zero value: (dtype code, bits) when packed on the
                         # CPU, a 0-d tensor on other devices; None for a bool mask
        "__weakref__",
    )

    def __init__(self, kind: int, payload: Any, version: int) -> None:
        self.kind = kind
        self.payload = payload
        self.version = version
        self.source_ref = None
        self.storage_ref = None
        self.layout = None
        self.shape = None
        self.layer = None
        self.requested = None
        self.raw_bytes = 0
        self.stored_bytes = 0
        self.accounting = None
        self.saves = 1
        self.pending = 1
        self.unpacked = None
        self.nonzero = None
        self.scale = None

    def __del__(self) -> None:
        accounting = self.accounting
        if accounting is not None:
            accounting.live_raw -= self.raw_bytes
            accounting.live_stored -= self.stored_bytes


class _KeptChoices:
    """A CPU tensor's codec choices (about 27 KB of host memory) and what they were
    sampled at, for the same tensor at later steps."""

    __slots__ = ("choices", "uses", "requested", "error_bound")

    def __init__(self, choices: Any, requested: float, error_bound: float) -> None:
        self.choices = choices
        self.uses = 0
        self.requested = requested      # the bound asked for
        self.error_bound = error_bound  # the absolute bound it meant

    def serves(self, requested: float) -> bool:
        return self.uses < _REUSE_STEPS and _within(_REUSE_REQUEST_DRIFT, requested, self.requested)


def _within(factor: float, value: float, reference: float) -> bool:
    return reference / factor <= value <= reference * factor


class _LayerStep:
    """Per-layer counters of the current step."""

    __slots__ = (
        "raw_bytes", "stored_bytes", "tensors",
        "codec_numel", "codec_nonzero", "codec_raw", "codec_bytes",
        "requested", "error_bound", "value_range",
    )

    def __init__(self) -> None:
        self.raw_bytes = 0
        self.stored_bytes = 0
        self.tensors = 0
        self.codec_numel = 0
        self.codec_nonzero: Optional[int] = None
        self.codec_raw = 0
        self.codec_bytes = 0
        self.requested: Optional[float] = None
        self.error_bound: Optional[float] = None
        self.value_range: Optional[float] = None


def _view_key(t: torch.Tensor, storage: torch.UntypedStorage) -> tuple:
    """What tells saves of one view of one storage apart within a step. A freed storage's
    address can come back for another: callers also keep the storage (weakly) and compare."""
    return (t.device, storage.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t._version)


def _codec_view(t: torch.Tensor) -> Tuple[torch.Tensor, Optional[tuple]]:
    """A contiguous tensor holding ``t``'s values, with as little copying as possible, and
    how to turn the decoded tensor back into ``t``'s layout.

    Broadcast dimensions (stride 0) are stored once and expanded again; a dense tensor in
    another memory order (channels_last, a transpose) is stored in its memory order and
    permuted back, so backward sees the same strides; anything else (a slice with gaps) is
    copied and comes back contiguous.
    """
    if t.is_contiguous():
        return t, None
    expand_to = None
    if any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride())):
        expand_to = tuple(t.shape)
        for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
            if stride == 0 and size > 1:
                t = t.narrow(dim, 0, 1)
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    permuted = t.permute(order)
    if permuted.is_contiguous():
        inverse = [0] * len(order)
        for position, dim in enumerate(order):
            inverse[dim] = position
        identity = order == list(range(len(order)))
        return permuted, (None if identity else tuple(inverse), expand_to)
    return t.contiguous(), (None, expand_to)


def _restore_layout(t: torch.Tensor, layout: Optional[tuple]) -> torch.Tensor:
    if layout is None:
        return t
    inverse, expand_to = layout
    if inverse is not None:
        t = t.permute(inverse)
    if expand_to is not None:
        t = t.expand(expand_to)
    return t


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # first element in the high bit, as numpy's packbits


def _pack_bits(t: torch.Tensor) -> torch.Tensor:
    """Bool tensor (contiguous) -> uint8 tensor of ceil(numel / 8) bytes, on its device."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.packbits(t.reshape(-1).numpy()))
    return _pack_bits_torch(t)


def _pack_bits_torch(t: torch.Tensor) -> torch.Tensor:
    """:func:`_pack_bits` in torch operations, for tensors on an accelerator."""
    flat = t.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=t.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`."""
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.numpy(), count=math.prod(shape)).view(np.bool_)
        return torch.from_numpy(bits).view(shape)
    return _unpack_bits_torch(packed, shape)


def _unpack_bits_torch(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) & weights) != 0
    return bits.reshape(-1)[: math.prod(shape)].view(shape)


class ActivationCompressor:
    """Compresses the activations autograd saves, with bounds from a schedule.

    Create it with :func:`compressed_activations`. Use it as a context manager around the
    training loop (it may be entered again after it exits, but not while active) and call
    :meth:`step` once per iteration, after backward::

        with actzip.compressed_activations(model, schedule=Gradual(1e-4, 1e-2, 0, 5000)) as az:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                loss.backward(); opt.step(); opt.zero_grad()
                az.step(loss=loss.detach())

    ``schedule=None`` compresses nothing but still measures what autograd saves (the
    baseline of a comparison).
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        *,
        schedule: Union[Schedule, float, Mapping, None],
        mode: str = "rel",
        min_bytes: int = 65536,
        include: Any = None,
        exclude: Any = None,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, not {type(model).__name__}")
        if mode not in ("abs", "rel"):
            raise ValueError(f"mode must be 'abs' or 'rel', got {mode!r}")
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, numbers.Integral) or min_bytes < 1:
            raise ValueError(f"min_bytes must be a positive int, got {min_bytes!r}")
        self.schedule: Optional[Schedule] = None if schedule is None else as_schedule(schedule)
        if self.schedule is not None and self.schedule.needs_model() and model is None:
            raise ValueError(
                f"{type(self.schedule).__name__} sets bounds per layer and needs the model: "
                "pass compressed_activations(model, schedule=...)"
            )
        if (include is not None or exclude is not None) and model is None:
            raise ValueError("include and exclude select layers of a model: pass the model too")
        for spec in (include, exclude):
            if spec is not None:
                layer_matches("", None, spec)  # validates: module types or name patterns
        self.model = model
        self.mode = mode
        self.min_bytes = int(min_bytes)
        self.include = include
        self.exclude = exclude

        self.step_count = 0
        self._history: List[Dict[str, Any]] = []
        self._unresolved_losses: List[int] = []
        self._accounting = _Accounting()
        self._cache: "weakref.WeakValueDictionary[tuple, _Saved]" = weakref.WeakValueDictionary()
        # Each layer's codebooks from its last tensor on a GPU, keyed by (layer, device): the
        # next tensor of the layer is coded with them, which saves the CUDA backend one wait
        # for the device per tensor (codebooks are lossless; stale ones only cost size).
        self._books: Dict[Tuple[str, torch.device], Any] = {}
        # On the CPU, each tensor's predictors and codebooks, keyed by (layer, shape, dtype,
        # its rank among the layer's tensors of that shape this step): the same tensor at
        # the next steps is coded with them and skips the codec's sampling pass (a fifth of
        # compression), until it has served _REUSE_STEPS steps or its bound has moved
        # (see _REUSE_REQUEST_DRIFT).
        self._choices: Dict[tuple, _KeptChoices] = {}
        self._choice_ranks: Dict[tuple, int] = {}  # this step's tensors a (layer, shape, dtype)
        # Status words of GPU decodes not yet read: backward does not wait for the device
        # to learn whether a stream was intact; step() and leaving the context do.
        self._unchecked: List[torch.Tensor] = []
        self._hooks_context: Optional[torch.autograd.graph.saved_tensors_hooks] = None
        self._module_handles: List[Any] = []
        self._grad_handles: List[Any] = []
        self._stack: List[str] = []
        self._layer_types: Dict[str, type] = {}
        self._weighted: Dict[str, List[nn.Parameter]] = {}
        self._dropout_layers: frozenset = frozenset()
        self._parameter_storages: frozenset = frozenset()
        self._allowed: Dict[str, bool] = {}
        self._bypass = False          # pack returns tensors unchanged (calibration)
        self._forced_bound: Optional[float] = None  # one bound for every layer (calibration)
        self._warned_failure = False
        self._collect = False
        self._grad_moments: Dict[int, Tuple[str, int, torch.Tensor, torch.Tensor]] = {}
        self._refresh_parameter_storages()
        self._start_step()

    # ----------------------------------------------------------------------------------
    # context manager
    # ----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._hooks_context is not None

    def __enter__(self) -> "ActivationCompressor":
        if self._hooks_context is not None:
            raise RuntimeError("this ActivationCompressor is already active")
        self._install_module_hooks()
        context = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        try:
            context.__enter__()
        except BaseException:
            self._remove_module_hooks()
            raise
        self._hooks_context = context
        if self._collect:
            self._install_grad_hooks()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        context, self._hooks_context = self._hooks_context, None
        try:
            if context is not None:
                context.__exit__(exc_type, exc, tb)
        finally:
            self._remove_module_hooks()
            self._remove_grad_hooks()
        if exc_type is None:
            self._check_decodes()
        return False

    def _check_decodes(self) -> None:
        """Reads the status words of this step's GPU decodes (one wait for the device) and
        raises FormatError if a stream was damaged (which only failing memory can do)."""
        pending, self._unchecked = self._unchecked, []
        by_device: Dict[torch.device, List[torch.Tensor]] = {}
        for status in pending:
            by_device.setdefault(status.device, []).append(status)
        for statuses in by_device.values():
            _pipeline.raise_for_status(torch.cat(statuses))

    def _install_module_hooks(self) -> None:
        self._stack.clear()
        model = self.model
        if model is None:
            return
        self._layer_types.clear()
        self._weighted.clear()
        self._refresh_parameter_storages()
        compressor = self

        def make_pre_hook(layer: str):
            def pre_hook(module, args):
                compressor._stack.append(layer)
                seen = compressor._seen
                if layer not in seen:
                    seen.add(layer)
                    compressor._order.append(layer)
            return pre_hook

        def post_hook(module, args, output):
            stack = compressor._stack
            if stack:
                stack.pop()

        dropout_layers = set()
        for name, module in model.named_modules():
            layer = name if name else ROOT_LAYER
            self._layer_types[layer] = type(module)
            if isinstance(module, nn.modules.dropout._DropoutNd):
                dropout_layers.add(layer)
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if own:
                self._weighted[layer] = own
            self._module_handles.append(module.register_forward_pre_hook(make_pre_hook(layer)))
            self._module_handles.append(module.register_forward_hook(post_hook, always_call=True))
        self._dropout_layers = frozenset(dropout_layers)

    def _refresh_parameter_storages(self) -> None:
        """Note where the model's parameters and buffers live (they may have moved since)."""
        storages = set()
        if self.model is not None:
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                if tensor.numel() > 0:
                    storages.add((tensor.device, tensor.untyped_storage().data_ptr()))
        self._parameter_storages = frozenset(storages)

    def _remove_module_hooks(self) -> None:
        for handle in self._module_handles:
            handle.remove()
        self._module_handles.clear()
        self._stack.clear()

    # ----------------------------------------------------------------------------------
    # per-layer policy
    # ----------------------------------------------------------------------------------

    def _current_layer(self) -> str:
        if self.model is None:
            return ALL_LAYER
        return self._stack[-1] if self._stack else OUTSIDE_LAYER

    def _layer_allowed(self, layer: str) -> bool:
        allowed = self._allowed.get(layer)
        if allowed is None:
            module_type = self._layer_types.get(layer)
            allowed = True
            if self.include is not None:
                allowed = layer_matches(layer, module_type, self.include)
            if allowed and self.exclude is not None:
                allowed = not layer_matches(layer, module_type, self.exclude)
            self._allowed[layer] = allowed
        return allowed

    def _layer_bound(self, layer: str) -> Optional[float]:
        """The bound for ``layer`` this step (cached for the step), or None."""
        if self._forced_bound is not None:
            return self._forced_bound if self._layer_allowed(layer) else None
        bounds = self._bounds
        if layer in bounds:
            return bounds[layer]
        bound = None
        if self.schedule is not None and self._layer_allowed(layer):
            bound = self.schedule.error_bound(layer, self._layer_types.get(layer))
            if bound is not None:
                bound = float(bound)
                if not (math.isfinite(bound) and bound > 0):
                    raise ValueError(f"the schedule gave layer {layer!r} an invalid bound {bound!r}")
        bounds[layer] = bound
        return bound

    def _is_parameter(self, t: torch.Tensor) -> bool:
        """Whether ``t`` holds a parameter's (or buffer's) values: see the module docstring."""
        storages = self._parameter_storages
        if storages and (t.device, t.untyped_storage().data_ptr()) in storages:
            return True
        if not t.requires_grad:
            return False
        if t.is_leaf:
            return self.model is None
        node = t.grad_fn
        for _ in range(4):
            if node is None:
                return False
            name = type(node).__name__
            if name == "AccumulateGrad":
                if self.model is None:
                    return True
                leaf = node.variable
                return (leaf.device, leaf.untyped_storage().data_ptr()) in storages
            if name not in _PARAMETER_VIEW_NODES:
                return False
            following = node.next_functions
            node = following[0][0] if following else None
        return False

    # ----------------------------------------------------------------------------------
    # pack and unpack
    # ----------------------------------------------------------------------------------

    def _pack(self, t: torch.Tensor) -> Any:
        if self._bypass:
            return t
        try:
            return self._pack_tensor(t)
        except Exception as error:  # never lose data or stop training because of actzip
            self._note_failure(error, t, None)
            return t

    def _pack_tensor(self, t: torch.Tensor) -> _Saved:
        if t.layout is not torch.strided:  # sparse and other layouts: kept, not counted
            return _Saved(_KEPT, t, t._version)
        if self._is_parameter(t):
            saved = _Saved(_KEPT, t, t._version)
            self._step_counts["parameters"] += 1
            return saved
        nbytes = t.numel() * t.element_size()
        layer = self._current_layer()
        if nbytes < self.min_bytes:
            saved = _Saved(_KEPT, t, t._version)
            self._account(saved, layer, nbytes, nbytes)
            self._step_counts["kept"] += 1
            return saved

        dtype = t.dtype
        if dtype in _FLOAT_DTYPES:
            bound = self._layer_bound(layer)
            want = _KEPT if bound is None else _COMPRESSED
            if want == _COMPRESSED and layer in self._dropout_layers:
                want = _BITS  # a dropout's scaled mask: two values, packed losslessly
        else:
            bound = None
            want = _BITS if dtype is torch.bool else _KEPT

        storage = t.untyped_storage()
        key = _view_key(t, storage)
        entry = self._cache.get(key)
        if entry is not None and entry.storage_ref() is storage:
            return self._share(entry, t, want, bound)

        if want == _COMPRESSED:
            saved = self._compress_new(t, layer, bound, nbytes)
        elif want == _BITS and dtype is not torch.bool:
            saved = self._pack_float_mask(t, layer, nbytes)
            if saved is None:  # not a two-valued mask after all
                saved = self._compress_new(t, layer, bound, nbytes)
        elif want == _BITS:
            saved = self._pack_mask(t, layer, nbytes)
        else:
            saved = _Saved(_KEPT, t, t._version)
            self._account(saved, layer, nbytes, nbytes)
            self._step_counts["kept"] += 1
        saved.storage_ref = weakref.ref(storage)
        self._cache[key] = saved
        return saved

    def _share(self, entry: _Saved, t: torch.Tensor, want: int, bound: Optional[float]) -> _Saved:
        """A second save of a storage already packed this step: reuse the entry, made as
        strict as the new saver needs (no compression, or a tighter bound)."""
        entry.saves += 1
        entry.pending += 1
        self._step_counts["shared"] += 1
        layer = self._current_layer()
        if layer != entry.layer:
            producers = self._shared_from.setdefault(layer, [])
            if entry.layer not in producers:
                producers.append(entry.layer)
        if entry.kind == _COMPRESSED:
            if want == _KEPT:
                self._replace_payload(entry, _KEPT, t, entry.raw_bytes)
                entry.source_ref = None
            elif want == _COMPRESSED and bound < entry.requested:
                try:
                    view, layout = _codec_view(t)
                    compressed = self._timed_compress(view, bound, entry.layer)
                except Exception as error:
                    self._note_failure(error, t, entry.layer)
                    self._replace_payload(entry, _KEPT, t, entry.raw_bytes)
                    entry.source_ref = None
                else:
                    entry.layout = layout
                    entry.requested = bound
                    self._replace_payload(entry, _COMPRESSED, compressed, compressed.nbytes)
        return entry

    def _replace_payload(self, entry: _Saved, kind: int, payload: Any, stored_bytes: int) -> None:
        """Swap what a shared entry holds, keeping the accounting and statistics right."""
        layer_step = self._layer_step(entry.layer)
        if entry.kind == _COMPRESSED:
            self._forget_codec(layer_step, entry)
        delta = stored_bytes - entry.stored_bytes
        entry.kind = kind
        entry.payload = payload
        entry.unpacked = None
        entry.stored_bytes = stored_bytes
        if entry.accounting is not None:
            entry.accounting.add(0, delta)
        self._step_stored += delta
        layer_step.stored_bytes += delta
        if kind == _COMPRESSED:
            self._note_codec(layer_step, entry, payload, entry.requested)

    def _timed_compress(self, view: torch.Tensor, bound: float, layer: str) -> CompressedTensor:
        start = time.perf_counter()
        try:
            ex = self._pipeline_exec(view)
            if ex is None:
                if view.device.type != "cpu":
                    return compress(view, bound, mode=self.mode)
                return self._compress_cpu(view, bound, layer)
            key = (layer, view.device)
            compressed, books = codec._compress_pipeline_books(view, bound, self.mode, False, ex, self._books.get(key))
            self._books[key] = books
            return compressed
        finally:
            self._compress_seconds += time.perf_counter() - start

    def _compress_cpu(self, view: torch.Tensor, bound: float, layer: str) -> CompressedTensor:
        """compress() of a CPU tensor, with the choices this tensor had at an earlier step
        where they are still fresh (see ``_choices``)."""
        base = (layer, tuple(view.shape), view.dtype)
        rank = self._choice_ranks.get(base, 0)
        self._choice_ranks[base] = rank + 1
        key = base + (rank,)
        kept = self._choices.get(key)
        if kept is None or not kept.serves(bound):
            compressed, choices = codec._compress_cpu_reusing(view, bound, self.mode, None)
            self._choices[key] = _KeptChoices(choices, bound, compressed.error_bound)
            return compressed
        compressed, _ = codec._compress_cpu_reusing(view, bound, self.mode, kept.choices)
        kept.uses += 1
        self._step_counts["choices_reused"] += 1
        if not _within(_REUSE_RANGE_DRIFT, compressed.error_bound, kept.error_bound):  # the values' range moved (rel)
            kept.uses = _REUSE_STEPS  # sample again next time
        return compressed

    @staticmethod
    def _pipeline_exec(view: torch.Tensor) -> Optional[_pipeline.Exec]:
        """Where the chunk pipeline compresses ``view`` (its GPU, with the CUDA backend), or
        None for the plain compress()."""
        if view.device.type == "cuda" and codec._cuda_usable():
            return _pipeline.Exec.for_device(view.device)
        return None

    def _compress_new(self, t: torch.Tensor, layer: str, bound: float, nbytes: int) -> _Saved:
        try:
            view, layout = _codec_view(t)
            compressed = self._timed_compress(view, bound, layer)
        except Exception as error:
            self._note_failure(error, t, layer)
            saved = _Saved(_KEPT, t, t._version)
            self._account(saved, layer, nbytes, nbytes)
            self._step_counts["kept"] += 1
            return saved
        saved = _Saved(_COMPRESSED, compressed, t._version)
        saved.layout = layout
        saved.requested = bound
        saved.source_ref = weakref.ref(t)
        self._account(saved, layer, nbytes, compressed.nbytes)
        saved.nonzero = self._count_nonzero(compressed, t, self._collect)
        self._note_codec(self._layer_step(layer), saved, compressed, bound)
        self._step_counts["compressed"] += 1
        return saved

    @staticmethod
    def _count_nonzero(compressed: CompressedTensor, t: torch.Tensor, required: bool) -> Optional[int]:
        """Non-zero elements: free when the encoder counted its zeros, else a pass over the
        tensor, made only when ``required`` (statistics steps)."""
        encoder_stats = compressed.stats
        if encoder_stats is not None and "zeros" in encoder_stats:
            return compressed.numel - int(encoder_stats["zeros"])
        return int(torch.count_nonzero(t)) if required else None

    def _note_codec(self, layer_step: "_LayerStep", entry: _Saved, compressed: CompressedTensor, bound: float) -> None:
        """Add one compressed tensor to its layer's statistics (for schedules and telemetry)."""
        layer_step.codec_numel += compressed.numel
        layer_step.codec_raw += compressed.raw_nbytes
        layer_step.codec_bytes += compressed.nbytes
        if entry.nonzero is not None:
            layer_step.codec_nonzero = (layer_step.codec_nonzero or 0) + entry.nonzero
        error_bound = compressed.error_bound
        if layer_step.requested is None or bound > layer_step.requested:
            layer_step.requested = bound
        if layer_step.error_bound is None or error_bound > layer_step.error_bound:
            layer_step.error_bound = error_bound
        if self.mode == "rel":
            value_range = error_bound / bound
            if layer_step.value_range is None or value_range > layer_step.value_range:
                layer_step.value_range = value_range

    @staticmethod
    def _forget_codec(layer_step: "_LayerStep", entry: _Saved) -> None:
        """Remove a stream about to be replaced from its layer's statistics."""
        compressed = entry.payload
        layer_step.codec_numel -= compressed.numel
        layer_step.codec_raw -= compressed.raw_nbytes
        layer_step.codec_bytes -= compressed.nbytes
        if entry.nonzero is not None and layer_step.codec_nonzero is not None:
            layer_step.codec_nonzero -= entry.nonzero
        if layer_step.codec_numel == 0:  # it was the layer's only stream: forget its bounds
            layer_step.requested = layer_step.error_bound = layer_step.value_range = None

    def _pack_mask(self, t: torch.Tensor, layer: str, nbytes: int) -> _Saved:
        view, layout = _codec_view(t)
        packed = _pack_bits(view)
        saved = _Saved(_BITS, packed, t._version)
        saved.layout = layout
        saved.shape = view.shape
        saved.source_ref = weakref.ref(t)
        self._account(saved, layer, nbytes, packed.numel())
        self._step_counts["masks"] += 1
        return saved

    def _pack_float_mask(self, t: torch.Tensor, layer: str, nbytes: int) -> Optional[_Saved]:
        """Pack a floating tensor whose elements are all +0.0 or one finite value (the
        scaled mask a dropout saves on the CPU: 0 or 1 / (1 - p)) to one bit a value,
        exactly. Returns None if the tensor has other values."""
        view, layout = _codec_view(t)
        if view.device.type == "cpu":
            # One pass in the core; the scale is kept as its bit pattern.
            packed = torch.empty((view.numel() + 7) // 8, dtype=torch.uint8)
            code = codec._DTYPE_CODES[view.dtype]
            value_bits = _core.pack_mask(
                codec._byte_view(view), code, view.numel(), packed.numpy(), codec.get_num_threads()
            )
            if value_bits is None:
                return None
            scale: Any = (code, value_bits)
        else:
            flat = view.reshape(-1)
            scale = flat.amax()
            positive_zero = flat.view(_BITS_VIEW[flat.dtype]) == 0  # +0.0 exactly, not -0.0
            if not bool(torch.isfinite(scale)) or not bool(torch.logical_or(positive_zero, flat == scale).all()):
                return None
            packed = _pack_bits(torch.logical_not(positive_zero).view(view.shape))
        saved = _Saved(_BITS, packed, t._version)
        saved.layout = layout
        saved.shape = view.shape
        saved.scale = scale
        saved.source_ref = weakref.ref(t)
        self._account(saved, layer, nbytes, packed.numel())
        self._step_counts["masks"] += 1
        return saved

    def _account(self, saved: _Saved, layer: str, raw_bytes: int, stored_bytes: int) -> None:
        saved.layer = layer
        saved.raw_bytes = raw_bytes
        saved.stored_bytes = stored_bytes
        saved.accounting = self._accounting
        self._accounting.add(raw_bytes, stored_bytes)
        self._step_raw += raw_bytes
        self._step_stored += stored_bytes
        layer_step = self._layer_step(layer)
        layer_step.raw_bytes += raw_bytes
        layer_step.stored_bytes += stored_bytes
        layer_step.tensors += 1

    def _layer_step(self, layer: str) -> _LayerStep:
        layer_step = self._layers.get(layer)
        if layer_step is None:
            layer_step = self._layers[layer] = _LayerStep()
        return layer_step

    def _note_failure(self, error: BaseException, t: torch.Tensor, layer: Optional[str]) -> None:
        self._step_counts["failures"] += 1
        if not self._warned_failure:
            self._warned_failure = True
            where = f" of layer {layer!r}" if layer is not None else ""
            warnings.warn(
                f"actzip could not compress a {tuple(t.shape)} {t.dtype} tensor{where} "
                f"({type(error).__name__}: {error}); it is kept uncompressed. Later failures "
                "are counted in history['failures'] without a warning.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _unpack(self, saved: Any) -> torch.Tensor:
        if type(saved) is not _Saved:
            return saved
        kind = saved.kind
        if kind == _KEPT:
            tensor = saved.payload
            if tensor._version != saved.version:
                raise _inplace_error(tensor, saved.version)
            return tensor
        source = saved.source_ref() if saved.source_ref is not None else None
        if source is not None and source._version != saved.version:
            raise _inplace_error(source, saved.version)
        result = saved.unpacked
        if result is None:
            if kind == _COMPRESSED:
                start = time.perf_counter()
                unchecked = codec._decompress_unchecked(saved.payload)
                if unchecked is None:
                    result = decompress(saved.payload)
                else:
                    result, status = unchecked
                    self._unchecked.append(status)
                self._decompress_seconds += time.perf_counter() - start
            elif type(saved.scale) is tuple:  # a float mask packed on the CPU
                code, value_bits = saved.scale
                result = torch.empty(saved.shape, dtype=codec._CODE_DTYPES[code])
                _core.unpack_mask(
                    saved.payload.numpy(), code, result.numel(), value_bits, codec._byte_view(result),
                    codec.get_num_threads(),
                )
            else:
                result = _unpack_bits(saved.payload, saved.shape)
                scale = saved.scale
                if scale is not None:
                    result = torch.where(result, scale, scale.new_zeros(()))
            result = _restore_layout(result, saved.layout)
        saved.pending -= 1
        if saved.pending > 0:
            saved.unpacked = result  # another saver of this storage will ask for it
        else:
            saved.unpacked = None
            saved.pending = saved.saves  # ready for another backward (retain_graph)
        return result

    # ----------------------------------------------------------------------------------
    # steps
    # ----------------------------------------------------------------------------------

    def _start_step(self) -> None:
        self._step_raw = 0
        self._step_stored = 0
        self._compress_seconds = 0.0
        self._decompress_seconds = 0.0
        self._step_counts = {
            "compressed": 0, "shared": 0, "kept": 0, "masks": 0, "failures": 0, "parameters": 0, "choices_reused": 0,
        }
        if self._choice_ranks:
            # Choices of tensors the step just ended did not make are dropped: shapes that
            # come and go (the last, smaller batch; sequences of varying length) hold none.
            made = self._choice_ranks
            self._choices = {k: v for k, v in self._choices.items() if k[3] < made.get(k[:3], 0)}
            self._choice_ranks = {}
        self._layers: Dict[str, _LayerStep] = {}
        self._bounds: Dict[str, Optional[float]] = {}
        self._shared_from: Dict[str, List[str]] = {}
        self._order: List[str] = []  # modules in the order the forward entered them
        self._seen: set = set()
        self._accounting.restart_peaks()
        self._collect = self.schedule is not None and self.model is not None and self.schedule.wants_statistics()
        self._grad_moments.clear()

    def step(self, loss: Union[torch.Tensor, float, None] = None) -> None:
        """Close the current iteration: record it in :attr:`history`, advance the schedule
        (passing what was measured) and start counting the next one.

        ``loss`` (a number or a one-element tensor) feeds :class:`~actzip.schedule.Adaptive`
        and the history; a tensor on a GPU is read only when needed.
        """
        self._check_decodes()
        loss_value = self._loss_value(loss)
        accounting = self._accounting
        counts = self._step_counts
        record: Dict[str, Any] = {
            "step": self.step_count,
            "loss": loss_value,
            "raw_bytes": self._step_raw,
            "compressed_bytes": self._step_stored,
            "peak_raw_bytes": accounting.peak_raw,
            "peak_compressed_bytes": accounting.peak_stored,
            "error_bounds": {},
            "requested_bounds": {},
            "layer_raw_bytes": {},
            "layer_compressed_bytes": {},
            "compress_seconds": self._compress_seconds,
            "decompress_seconds": self._decompress_seconds,
            "tensors_compressed": counts["compressed"],
            "tensors_shared": counts["shared"],
            "tensors_kept": counts["kept"],
            "masks_packed": counts["masks"],
            "failures": counts["failures"],
            "choices_reused": counts["choices_reused"],
        }
        for layer, layer_step in self._layers.items():
            record["layer_raw_bytes"][layer] = layer_step.raw_bytes
            record["layer_compressed_bytes"][layer] = layer_step.stored_bytes
            if layer_step.error_bound is not None:
                record["error_bounds"][layer] = layer_step.error_bound
                record["requested_bounds"][layer] = layer_step.requested
        self._history.append(record)

        if isinstance(loss_value, torch.Tensor):
            self._unresolved_losses.append(len(self._history) - 1)
        if self.schedule is not None:
            self.schedule.step(self._step_stats(loss_value))
        self.step_count += 1
        self._remove_grad_hooks()
        self._start_step()
        if self._collect and self.active:
            self._install_grad_hooks()

    @staticmethod
    def _loss_value(loss: Any) -> Any:
        if loss is None:
            return None
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"loss must have one element, got shape {tuple(loss.shape)}")
            loss = loss.detach()
            return float(loss) if loss.device.type == "cpu" else loss.reshape(())
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            return float(loss)
        raise TypeError(f"loss must be a number or a tensor, not {type(loss).__name__}")

    def _step_stats(self, loss_value: Any) -> StepStats:
        grad_stds = self._gradient_spreads() if self._collect else {}
        layers: Dict[str, LayerStats] = {}
        for layer, layer_step in self._layers.items():
            layers[layer] = LayerStats(
                numel=layer_step.codec_numel,
                nonzero=layer_step.codec_nonzero,
                raw_bytes=layer_step.codec_raw,
                compressed_bytes=layer_step.codec_bytes,
                requested_bound=layer_step.requested,
                error_bound=layer_step.error_bound,
                value_range=layer_step.value_range,
                grad_std=grad_stds.get(layer),
            )
        for layer, value in grad_stds.items():
            if layer not in layers:
                layers[layer] = LayerStats(grad_std=value)
        return StepStats(
            step=self.step_count,
            mode=self.mode,
            loss=loss_value,
            layers=layers,
            layer_order=list(self._order),
            weighted_layers=list(self._weighted),
            peak_compressed_bytes=self._accounting.peak_stored,
            peak_raw_bytes=self._accounting.peak_raw,
            has_statistics=self._collect,
            shared_from={layer: list(producers) for layer, producers in self._shared_from.items()},
        )

    # ----------------------------------------------------------------------------------
    # gradient statistics (Adaptive)
    # ----------------------------------------------------------------------------------

    def _install_grad_hooks(self) -> None:
        if self._grad_handles:
            return
        for layer, params in self._weighted.items():
            for param in params:
                self._grad_handles.append(
                    param.register_post_accumulate_grad_hook(self._make_grad_hook(layer))
                )

    def _make_grad_hook(self, layer: str) -> Callable[[torch.Tensor], None]:
        moments = self._grad_moments

        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is None or grad.numel() == 0:
                return
            variance, mean = torch.var_mean(grad.detach().float(), correction=0)
            moments[id(param)] = (layer, grad.numel(), mean, variance)

        return hook

    def _remove_grad_hooks(self) -> None:
        for handle in self._grad_handles:
            handle.remove()
        self._grad_handles.clear()

    def _gradient_spreads(self) -> Dict[str, float]:
        """Standard deviation of each weighted layer's parameter gradients (all its own
        parameters pooled), from the moments the gradient hooks recorded."""
        pooled: Dict[str, List[float]] = {}
        for layer, count, mean, variance in self._grad_moments.values():
            mean_value, variance_value = float(mean), float(variance)
            total = pooled.setdefault(layer, [0.0, 0.0, 0.0])
            total[0] += count
            total[1] += count * mean_value
            total[2] += count * (variance_value + mean_value * mean_value)
        spreads = {}
        for layer, (count, first, second) in pooled.items():
            mean_value = first / count
            spreads[layer] = math.sqrt(max(second / count - mean_value * mean_value, 0.0))
        return spreads

    # ----------------------------------------------------------------------------------
    # calibration of Adaptive's coefficient
    # ----------------------------------------------------------------------------------

    def calibrate(
        self,
        closure: Callable[[], torch.Tensor],
        *,
        probe_bound: Optional[float] = None,
    ) -> Dict[str, float]:
        """Measure how the activation error of each layer shows in its weight gradient, and
        hand the result to the schedule (:meth:`actzip.schedule.Adaptive.calibrate`).

        ``closure()`` runs the forward pass on one batch and returns the loss; this method
        calls backward itself. The batch is run twice with the same random state (dropout
        masks), first uncompressed, then with every layer compressed at ``probe_bound``
        (default: the bound the schedule gives each layer now). For each layer ``l`` with
        compressed activations, with ``g`` the layer whose weight gradient they feed (``l``
        itself, or the next layer with parameters), it returns

            a_l = std(G_g(compressed) - G_g(exact)) / (L * eb_l * sqrt(N_l * R_l))

        (``L`` the loss, ``eb_l`` the absolute bound used, ``N_l R_l`` the non-zero
        elements). Parameters, their gradients, the buffers (BatchNorm statistics) and the
        random state are left as they were; nothing is recorded in the history.
        """
        model = self.model
        if model is None:
            raise ValueError("calibrate needs the model: pass compressed_activations(model, ...)")
        if probe_bound is not None:
            probe_bound = float(probe_bound)
            if not (math.isfinite(probe_bound) and probe_bound > 0):
                raise ValueError(f"probe_bound must be positive and finite, got {probe_bound!r}")
        entered_here = not self.active
        if entered_here:
            self.__enter__()
        saved_grads = {param: param.grad for param in model.parameters()}
        saved_buffers = [buffer.detach().clone() for buffer in model.buffers()]
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        saved_step = self._save_step_state()
        try:
            with torch.random.fork_rng(devices=devices):
                cpu_state = torch.get_rng_state()
                cuda_states = [torch.cuda.get_rng_state(d) for d in devices]

                def run(compressed: bool):
                    torch.set_rng_state(cpu_state)
                    for device, state in zip(devices, cuda_states):
                        torch.cuda.set_rng_state(state, device)
                    with torch.no_grad():
                        for buffer, value in zip(model.buffers(), saved_buffers):
                            buffer.copy_(value)
                    for param in model.parameters():
                        param.grad = None
                    self._start_step()
                    self._collect = compressed
                    self._bypass = not compressed
                    self._forced_bound = probe_bound if compressed else None
                    try:
                        loss = closure()
                        loss.backward()
                    finally:
                        self._bypass = False
                        self._forced_bound = None
                    gradients = {
                        layer: torch.cat([p.grad.detach().reshape(-1).double() for p in params if p.grad is not None])
                        for layer, params in self._weighted.items()
                        if any(p.grad is not None for p in params)
                    }
                    return float(loss.detach()), gradients

                exact_loss, exact_grads = run(False)
                _, compressed_grads = run(True)
                layers = {layer: s for layer, s in self._layers.items() if s.codec_numel > 0}
                order = list(self._order)
        finally:
            with torch.no_grad():
                for buffer, value in zip(model.buffers(), saved_buffers):
                    buffer.copy_(value)
            for param, grad in saved_grads.items():
                param.grad = grad
            self._restore_step_state(saved_step)
            if entered_here:
                self.__exit__(None, None, None)

        error_spread = {
            layer: float((compressed_grads[layer] - exact_grads[layer]).std(correction=0))
            for layer in exact_grads
            if layer in compressed_grads
        }
        stats = StepStats(
            step=self.step_count,
            mode=self.mode,
            layers={layer: LayerStats(grad_std=value) for layer, value in error_spread.items() if value > 0},
            layer_order=order,
        )
        feeding = gradient_spread_by_layer(stats)  # error spread of the gradient each layer feeds
        coefficients: Dict[str, float] = {}
        for layer, layer_step in layers.items():
            spread = feeding.get(layer)
            nonzero = layer_step.codec_nonzero
            if spread is None or not nonzero or not layer_step.error_bound or exact_loss <= 0:
                continue
            coefficients[layer] = spread / (exact_loss * layer_step.error_bound * math.sqrt(nonzero))
        if coefficients and self.schedule is not None:
            self.schedule.calibrate(coefficients)
        return coefficients

    def _save_step_state(self) -> tuple:
        return (
            self._step_raw, self._step_stored, self._compress_seconds, self._decompress_seconds,
            self._step_counts, self._layers, self._bounds, self._order, self._seen, self._collect,
            self._accounting.peak_raw, self._accounting.peak_stored, dict(self._grad_moments),
            self._shared_from,
        )

    def _restore_step_state(self, state: tuple) -> None:
        (
            self._step_raw, self._step_stored, self._compress_seconds, self._decompress_seconds,
            self._step_counts, self._layers, self._bounds, self._order, self._seen, self._collect,
            peak_raw, peak_stored, moments, self._shared_from,
        ) = state
        self._accounting.peak_raw, self._accounting.peak_stored = peak_raw, peak_stored
        self._grad_moments.clear()
        self._grad_moments.update(moments)

    # ----------------------------------------------------------------------------------
    # results
    # ----------------------------------------------------------------------------------

    @property
    def history(self) -> List[Dict[str, Any]]:
        """One dict per finished step (see :mod:`actzip.telemetry` for the keys)."""
        for index in self._unresolved_losses:  # losses left on an accelerator, read now
            self._history[index]["loss"] = float(self._history[index]["loss"])
        self._unresolved_losses.clear()
        return self._history

    @property
    def live_bytes(self) -> Tuple[int, int]:
        """(raw, compressed) bytes held for backward right now."""
        return self._accounting.live_raw, self._accounting.live_stored

    def summary(self) -> str:
        """A per-layer table of bytes, ratios and bounds, with totals (a string)."""
        return telemetry.summarize(self.history, layer_types=self._layer_types)

    def to_csv(self, path) -> None:
        """Write the history as CSV, one row per step and layer (see telemetry.write_csv)."""
        telemetry.write_csv(self.history, path)

    def state_dict(self) -> Dict[str, Any]:
        """The step counter and the schedule's state, to checkpoint with the model."""
        return {
            "step": self.step_count,
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count = int(state["step"])
        if self.schedule is not None and state.get("schedule") is not None:
            self.schedule.load_state_dict(state["schedule"])
        self._start_step()

    def __repr__(self) -> str:
        return (
            f"ActivationCompressor(schedule={self.schedule!r}, mode={self.mode!r}, "
            f"min_bytes={self.min_bytes}, step={self.step_count}, active={self.active})"
        )


def compressed_activations(
    model: Optional[nn.Module] = None,
    *,
    schedule: Union[Schedule, float, Mapping, None],
    mode: str = "rel",
    min_bytes: int = 65536,
    include: Any = None,
    exclude: Any = None,
) -> ActivationCompressor:
    """Compress the activations autograd saves while the returned context is active.

    ``schedule``: a :class:`~actzip.schedule.Schedule`, a plain number (a constant bound),
    a mapping of layer selectors to bounds or schedules (a
    :class:`~actzip.schedule.PerLayer`), or None (measure only). Bounds are in the units of
    ``mode``: ``"rel"``, a fraction of each tensor's value range (max - min); ``"abs"``,
    absolute.

    ``model`` (optional) names each layer after the innermost module running when a tensor
    is saved (its qualified name in ``model.named_modules()``), which per-layer bounds,
    ``include``/``exclude`` and :class:`~actzip.schedule.Adaptive` need. ``include`` and
    ``exclude`` select layers by module type (``torch.nn.Conv2d``), name pattern
    (``"layer1.*"``) or a tuple of these; excluded layers keep their tensors uncompressed.

    Only tensors of at least ``min_bytes`` bytes are compressed: small ones are not worth
    the call.
    """
    return ActivationCompressor(
        model,
        schedule=schedule,
        mode=mode,
        min_bytes=min_bytes,
        include=include,
        exclude=exclude,
    )
