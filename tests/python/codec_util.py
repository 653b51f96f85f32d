"""Helpers shared by the codec tests: inputs, bit views, the devices to run on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_CODE = {torch.float32: ref.FLOAT32, torch.float16: ref.FLOAT16, torch.bfloat16: ref.BFLOAT16}
BITS_TORCH = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
BITS_NUMPY = {torch.float32: np.uint32, torch.float16: np.uint16, torch.bfloat16: np.uint16}

# Every codec test runs on every device this machine has; CPU always.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]


def bits_of(t) -> np.ndarray:
    """The elements' bit patterns, flat, as unsigned integers (numpy has no bfloat16)."""
    if isinstance(t, np.ndarray):
        return np.ascontiguousarray(t).reshape(-1).view(np.uint32 if t.dtype == np.float32 else np.uint16).copy()
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(BITS_TORCH[t.dtype]).numpy().view(BITS_NUMPY[t.dtype]).copy()


def from_bits(bits: np.ndarray, dtype: torch.dtype, shape=None) -> torch.Tensor:
    """A tensor of `dtype` with the given bit patterns."""
    bits = np.ascontiguousarray(bits, dtype=BITS_NUMPY[dtype])
    t = torch.from_numpy(bits.view(np.int32 if dtype == torch.float32 else np.int16).copy()).view(dtype)
    return t.reshape(shape) if shape is not None else t


def as_float64(t) -> np.ndarray:
    """Values widened exactly to float64, flat."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float64).reshape(-1)
    return t.detach().to("cpu").to(torch.float64).reshape(-1).numpy()


def relu_like(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Post-ReLU-like activations: half exact zeros, smooth positive values with some noise."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.sin(torch.arange(n, dtype=torch.float64) * 0.003) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return torch.clamp(smooth, min=0).to(dtype)


def smooth_image(shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Image-like activations of shape (..., H, W): per leading index, a sum of three smooth
    2-D waves with random amplitudes; smooth along both of the last two axes (2-D Lorenzo
    pays), crossing zero along curves."""
    g = torch.Generator().manual_seed(seed)
    *lead, h, w = shape
    hh = torch.arange(h, dtype=torch.float64).view(h, 1)
    ww = torch.arange(w, dtype=torch.float64).view(1, w)
    out = torch.zeros(*lead, h, w, dtype=torch.float64)
    for _ in range(3):
        fh, fw, ph, pw = (torch.rand(4, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.3, 6.3, 6.3])).tolist()
        amp = torch.randn(*lead, 1, 1, generator=g, dtype=torch.float64)
        out += amp * torch.sin(fh * hh + ph) * torch.cos(fw * ww + pw)
    return out.to(dtype)


def row_plus_column_field(h: int, w: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """x[i, j] = a(i) + b(j), a slow (below 0.01 a row), b rough: 2-D Lorenzo predicts it
    almost exactly at any width, while predicting along the flattened order pays for b's
    jumps. Magnitudes up to 6."""
    g = torch.Generator().manual_seed(seed)
    a = 5 * torch.sin(torch.arange(h, dtype=torch.float64) * 0.002).view(h, 1)
    b = (torch.rand(w, generator=g, dtype=torch.float64) * 2 - 1).view(1, w)
    return (a + b).to(dtype)


def specials(dtype=torch.float32) -> torch.Tensor:
    """NaN, +Inf, -Inf, -0.0, +0.0, the extremes of the dtype and subnormals."""
    info = torch.finfo(dtype)
    vals = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, info.max, -info.max, info.tiny, -info.tiny,
            info.tiny / 4, -info.tiny / 2, info.eps, 1.0, -1.0]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


def check_bound(x, y, error_bound: float) -> None:
    """The promises of actzip.compress, element by element: finite values within the bound
    (in float64), +0.0 exact, non-zero values non-zero with their sign, NaN/+-Inf/-0.0 exact."""
    xb, yb = bits_of(x), bits_of(y)
    xv, yv = as_float64(x), as_float64(y)
    assert xb.shape == yb.shape
    special = ~np.isfinite(xv) | (xv == 0)
    bad_special = np.nonzero(special & (xb != yb))[0]
    assert bad_special.size == 0, f"specials/zeros changed at {bad_special[:10]}: {xv[bad_special[:10]]} -> {yv[bad_special[:10]]}"
    finite = ~special
    with np.errstate(invalid="ignore"):
        err = np.abs(xv - yv)
    bad = np.nonzero(finite & ~(err <= error_bound))[0]
    assert bad.size == 0, f"bound {error_bound} broken at {bad[:10]}: {xv[bad[:10]]} -> {yv[bad[:10]]}"
    bad_sign = np.nonzero(finite & ((yv == 0) | (np.signbit(xv) != np.signbit(yv))))[0]
    assert bad_sign.size == 0, f"zero or sign rule broken at {bad_sign[:10]}"
