"""Where the CPU backend's worker threads come from.

With torch loaded (Linux), a call on several threads runs as a parallel region of torch's
own OpenMP runtime, so that the workers torch leaves spinning after each operator take the
job instead of fighting actzip's threads for the cores. actzip's own threads take over
where that runtime must not or cannot be used. Either way the output is the same.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import pytest
import torch

import actzip
from actzip import _core
from codec_util import relu_like, smooth_image

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the process's OpenMP runtime is looked up on Linux only"
)


@pytest.fixture
def restore_threads():
    torch_threads, actzip_threads = torch.get_num_threads(), actzip.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    actzip.set_num_threads(actzip_threads)
    _core.use_own_threads(False)


@linux_only
def test_jobs_run_in_torchs_openmp_runtime_where_it_has_workers_to_lend(restore_threads):
    torch.set_num_threads(2)
    assert _core.parallel_runtime() == "openmp"
    _core.use_own_threads(True)
    assert _core.parallel_runtime() == "threads"
    _core.use_own_threads(False)
    # torch on one thread: its team has no idle workers, and actzip's own threads do not spin.
    torch.set_num_threads(1)
    assert _core.parallel_runtime() == "threads"


@pytest.mark.parametrize("own", [False, True], ids=["openmp", "own-threads"])
def test_every_runtime_and_thread_count_gives_the_same_bytes(own, restore_threads):
    torch.set_num_threads(2)
    inputs = [smooth_image((12, 8, 32, 32), 3), relu_like(40 * 16384 + 77, 4)]
    actzip.set_num_threads(1)
    streams = [actzip.compress(x, 1e-3) for x in inputs]
    expected = [(ct.to_bytes(), actzip.decompress(ct).view(torch.int32)) for ct in streams]
    _core.use_own_threads(own)
    for threads in (2, 3, 5):
        actzip.set_num_threads(threads)
        for x, (stream, decoded) in zip(inputs, expected):
            ct = actzip.compress(x, 1e-3)
            assert ct.to_bytes() == stream
            assert torch.equal(actzip.decompress(ct).view(torch.int32), decoded)


def _compress_in_child(queue) -> None:
    # numpy in and out: torch's own parallel operators would hang in this child, since the
    # parent's OpenMP workers do not exist here (libgomp is not fork-safe).
    x = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    actzip.set_num_threads(2)
    ct = actzip.compress(x, 1e-3)
    y = actzip.decompress(ct)
    queue.put((_core.parallel_runtime(), float(np.abs(x.astype(np.float64) - y).max()), ct.error_bound))


@linux_only
def test_a_child_forked_after_a_parallel_call_compresses_on_its_own_threads(restore_threads):
    torch.set_num_threads(2)
    actzip.set_num_threads(2)
    assert _core.parallel_runtime() == "openmp"
    actzip.decompress(actzip.compress(torch.randn(300_000), 1e-3))  # the runtime's workers exist now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_compress_in_child, args=(queue,))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    runtime, max_error, bound = queue.get(timeout=10)
    assert runtime == "threads"
    assert max_error <= bound
    assert _core.parallel_runtime() == "openmp"  # the parent is unaffected
