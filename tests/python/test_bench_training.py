"""Tests of benchmarks/bench_training.py's ``copy`` method, the reference the README's
step-time analysis leans on: it must copy what actzip would code and change nothing
backward computes."""

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import actzip  # noqa: F401  (the installed package, before the script puts python/ on sys.path)
from actzip.examples import TinyTransformer


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_training.py"
    spec = importlib.util.spec_from_file_location("bench_training_under_test", path)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
    return module


def _loss_and_grads(model, tokens, hooks):
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks in every run
    with hooks:
        loss = TinyTransformer.loss(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_copy_method_leaves_gradients_bit_identical(bench):
    # The forward pass frees temporaries whose addresses later tensors of the same shape
    # reuse: copies found by address alone would hand backward stale values.
    torch.manual_seed(0)
    model = TinyTransformer(d_model=64, n_heads=2, n_layers=2, seq_len=32)
    tokens = torch.randint(0, 256, (8, 33))
    loss, grads = _loss_and_grads(model, tokens, contextlib.nullcontext())
    hooks = bench.CopySaved(model, min_bytes=1024)
    copied_loss, copied_grads = _loss_and_grads(model, tokens, hooks)
    assert torch.equal(copied_loss, loss)
    for got, want in zip(copied_grads, grads):
        assert torch.equal(got, want)


def test_copy_method_copies_what_actzip_would_code(bench):
    layer = nn.Linear(64, 64)
    hooks = bench.CopySaved(layer, min_bytes=1024)
    pack = hooks.pack_hook
    activation = torch.randn(32, 64)  # 8 KiB of float32
    copy = pack(activation)
    assert torch.equal(copy, activation)
    assert copy.untyped_storage().data_ptr() != activation.untyped_storage().data_ptr()
    assert pack(activation) is copy  # a second save of the same view: the same copy
    assert pack(activation.t()) is not copy  # another view of the storage: its own copy
    activation.add_(1)  # a new version: copied again
    again = pack(activation)
    assert again is not copy and torch.equal(again, activation)
    # Kept as they are: parameters (and their views), small tensors, integers, bool masks.
    assert pack(layer.weight) is layer.weight
    weight_t = layer.weight.t()
    assert pack(weight_t) is weight_t
    small = torch.randn(255)
    assert pack(small) is small
    tokens = torch.randint(0, 9, (32, 64))
    assert pack(tokens) is tokens
    mask = torch.rand(64, 64) > 0.5
    assert pack(mask) is mask
