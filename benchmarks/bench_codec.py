#!/usr/bin/env python
"""Compare actzip with SZ3 and ZFP on activations that real training saves for backward.

Trains a small ResNet on scikit-learn's digits and a small transformer on the Python
standard library's source (both offline, see ``actzip.examples``), captures the tensors
each saves for backward, groups them into categories, and for every category and
relative bound (a fraction of each tensor's value range, turned into the same absolute
bound for every compressor) measures:

- compression ratio (raw bytes / stream bytes, summed over the category's tensors);
- maximum error divided by the bound (must be at most 1);
- compress and decompress throughput in MB/s of raw data (the median of ``--reps`` runs
  of each tensor, summed), for actzip on 1 thread and on ``--threads`` threads, and for
  the peers on one thread (their Python bindings' default);
- how many exact zeros decode as exact zeros, and how many non-negative inputs decode
  negative (a ReLU mask recomputed from the decoded tensor changes with them).

Peers: SZ3 through ``pysz`` (absolute bound, its default interpolation + Lorenzo
predictor) and ZFP through ``zfpy`` (fixed-accuracy mode, tolerance = bound); a missing
one is skipped (``pip install actzip[bench]``). They get the tensor with its size-1
dimensions dropped, since both work on blocks along every dimension.

Last, actzip alone codes every tensor as float32, float16 and bfloat16 (what torch.autocast
saves) at a relative bound of 1e-2: ratio and MB/s of each dtype's own bytes, on 1 and
``--threads`` threads, with the bound checked in the dtype.

The tables are markdown; ``--json PATH`` writes every number, per tensor as well.
Compare ratios between compressors (and with the memcpy ceiling printed first) rather
than absolute times, which depend on the machine.

Usage::

    PYTHONPATH=python python benchmarks/bench_codec.py --quick
    PYTHONPATH=python python benchmarks/bench_codec.py --json benchmarks/out/codec.json
    # keep the captured tensors, so that a rerun measures again without training:
    PYTHONPATH=python python benchmarks/bench_codec.py --cache benchmarks/out/activations.pt
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actzip import examples

RELATIVE_BOUNDS = (1e-2, 1e-3, 1e-4)

# Categories in table order; each is filled by one of the two models.
CATEGORIES = (
    "conv post-ReLU",
    "conv dense (BN/conv inputs)",
    "attention probs",
    "attention q/k/v",
    "GELU inputs",
    "Linear inputs",
    "LayerNorm inputs",
    "dropout masks (float)",
)


# ---------------------------------------------------------------------------------------
# Compressors: each is a pair (compress(x, bound) -> blob, decompress(blob, x) -> array)
# ---------------------------------------------------------------------------------------

@dataclass
class Compressor:
    name: str
    compress: Callable[[np.ndarray, float], object]
    decompress: Callable[[object, np.ndarray], np.ndarray]
    size: Callable[[object], int]
    setup: Callable[[], None] = lambda: None  # run before this compressor's timings


def _peer_shape(x: np.ndarray) -> Tuple[int, ...]:
    """Shape handed to the block-based peers: size-1 dimensions dropped, at most 4 kept."""
    shape = [extent for extent in x.shape if extent != 1] or [1]
    while len(shape) > 4:
        shape[:2] = [shape[0] * shape[1]]
    return tuple(shape)


def make_actzip_compressors(threads: int) -> Tuple[List[Compressor], Optional[str]]:
    try:
        import actzip
        compress, decompress, set_num_threads = actzip.compress, actzip.decompress, actzip.set_num_threads
    except (ImportError, AttributeError) as exc:
        return [], f"actzip codec unavailable ({exc})"

    def run_compress(x, bound):
        return compress(x, bound, mode="abs")

    def run_decompress(blob, x):
        return decompress(blob)

    result = []
    for count in sorted({1, threads}):
        result.append(
            Compressor(
                name=f"actzip {count}t",
                compress=run_compress,
                decompress=run_decompress,
                size=lambda blob: blob.nbytes,
                setup=lambda count=count: set_num_threads(count),
            )
        )
    return result, None


def make_sz3() -> Tuple[Optional[Compressor], Optional[str]]:
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None, "SZ3 (pysz) not installed: skipped; install it with `pip install actzip[bench]`"

    def run_compress(x, bound):
        config = szConfig()
        config.errorBoundMode = szErrorBoundMode.ABS
        config.absErrorBound = float(bound)
        blob, _ = sz.compress(x.reshape(_peer_shape(x)), config)
        return blob

    def run_decompress(blob, x):
        decoded, _ = sz.decompress(blob, np.float32, _peer_shape(x))
        return decoded.reshape(x.shape)

    return Compressor("SZ3", run_compress, run_decompress, size=lambda blob: blob.nbytes), None


def make_zfp() -> Tuple[Optional[Compressor], Optional[str]]:
    try:
        import zfpy
    except ImportError:
        return None, "ZFP (zfpy) not installed: skipped; install it with `pip install actzip[bench]`"

    def run_compress(x, bound):
        return zfpy.compress_numpy(x.reshape(_peer_shape(x)), tolerance=float(bound))

    def run_decompress(blob, x):
        return zfpy.decompress_numpy(blob).reshape(x.shape)

    return Compressor("ZFP", run_compress, run_decompress, size=len), None


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------

def timed(function: Callable[[], object], reps: int) -> Tuple[object, float]:
    """Run ``function`` ``reps`` times; return the last result and the median seconds."""
    seconds = []
    result = None
    for _ in range(reps):
        result = None  # free the previous output before timing the next call
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def memcpy_bandwidth(nbytes: int, reps: int) -> float:
    """Median single-thread copy rate of ``nbytes`` bytes, in MB/s of data copied."""
    source = np.random.default_rng(0).random(nbytes // 8)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault in the pages before timing
    _, seconds = timed(lambda: np.copyto(target, source), reps)
    return source.nbytes / seconds / 1e6


class OtherLoad:
    """CPU time that other processes take while the benchmark runs (Linux; else unknown).

    The machine's busy time from ``/proc/stat`` minus this process's own CPU time: when it
    is large, the timings are noisy.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> Optional[Tuple[float, float, float]]:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
        busy = sum(fields[:8]) - fields[3] - fields[4]
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()

    def fraction(self) -> Optional[float]:
        """Other processes' CPU seconds per second of wall time per CPU, since creation."""
        end = self._sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other) / (end[2] - self.start[2]) / (os.cpu_count() or 1)


@dataclass
class TensorResult:
    tensor: str
    category: str
    compressor: str
    relative_bound: float
    error_bound: float  # absolute, the same for every compressor
    raw_bytes: int
    stream_bytes: int
    compress_s: float
    decompress_s: float
    max_error: float
    zeros: int
    zeros_kept: int
    non_negative: int
    decoded_negative: int


def measure(
    compressor: Compressor, name: str, category: str, x: np.ndarray,
    relative_bound: float, error_bound: float, reps: int,
) -> Tuple[TensorResult, object, np.ndarray]:
    blob, compress_s = timed(lambda: compressor.compress(x, error_bound), reps)
    decoded, decompress_s = timed(lambda: compressor.decompress(blob, x), reps)
    decoded = np.asarray(decoded)
    if decoded.shape != x.shape or decoded.dtype != x.dtype:
        raise RuntimeError(
            f"{compressor.name} decoded {name} as {decoded.dtype}{decoded.shape}, "
            f"expected {x.dtype}{x.shape}"
        )
    error = np.abs(decoded.astype(np.float64) - x.astype(np.float64))
    zero = x == 0
    non_negative = x >= 0
    result = TensorResult(
        tensor=name, category=category, compressor=compressor.name,
        relative_bound=relative_bound, error_bound=error_bound,
        raw_bytes=x.nbytes, stream_bytes=int(compressor.size(blob)),
        compress_s=compress_s, decompress_s=decompress_s,
        max_error=float(np.nanmax(error)) if error.size else 0.0,
        zeros=int(zero.sum()), zeros_kept=int((zero & (decoded == 0)).sum()),
        non_negative=int(non_negative.sum()),
        decoded_negative=int((non_negative & (decoded < 0)).sum()),
    )
    return result, blob, decoded


def check_actzip_stream(blob, decoded: np.ndarray, error_bound: float, name: str) -> List[str]:
    """Checks the benchmark makes on the side; each failure is a line to report."""
    import actzip
    problems = []
    data = blob.to_bytes()
    if len(data) != blob.nbytes:
        problems.append(f"{name}: len(to_bytes()) = {len(data)} but nbytes = {blob.nbytes}")
    again = actzip.decompress(actzip.CompressedTensor.from_bytes(data))
    if not np.array_equal(np.asarray(again).view(np.uint32), decoded.view(np.uint32)):
        problems.append(f"{name}: from_bytes(to_bytes()) decodes to other values")
    if not blob.error_bound <= error_bound:
        problems.append(f"{name}: error_bound {blob.error_bound!r} above the requested {error_bound!r}")
    return problems


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------

def resnet_activations(train_steps: int, batch_size: int, seed: int, log) -> List[Tuple[str, str, torch.Tensor]]:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = examples.load_digits_images(32, seed=seed)
    model = examples.ResNet18Small()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(train_steps):
        batch = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    log(f"ResNet18Small: {train_steps} steps of {batch_size} digits in "
        f"{time.perf_counter() - start:.0f} s, last loss {loss.item():.3f}, test accuracy {accuracy:.3f}")

    inputs, targets = x_train[:batch_size], y_train[:batch_size]
    saved = examples.capture_saved_activations(model, inputs, lambda out: F.cross_entropy(out, targets))
    modules = dict(model.named_modules())
    result = []
    for name, tensor in saved:
        module = modules.get(name.rsplit("#", 1)[0])
        if isinstance(module, nn.ReLU):
            result.append((name, "conv post-ReLU", tensor))
        elif isinstance(module, (nn.BatchNorm2d, nn.Conv2d)):
            result.append((name, "conv dense (BN/conv inputs)", tensor))
    return result


def transformer_activations(train_steps: int, seed: int, log) -> List[Tuple[str, str, torch.Tensor]]:
    torch.manual_seed(seed)
    seq_len, batch_size = 128, 32
    train_text, validation_text = examples.split_text(examples.load_text_corpus(2_000_000, seed=seed))
    model = examples.TinyTransformer(seq_len=seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    batches = examples.text_batches(train_text, seq_len, batch_size, generator=generator)
    start = time.perf_counter()
    model.train()
    for _ in range(train_steps):
        inputs, targets = next(batches)
        loss = model.loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    validation = examples.text_batches(
        validation_text, seq_len, batch_size, generator=torch.Generator().manual_seed(seed), num_batches=4)
    with torch.no_grad():
        validation_loss = statistics.mean(model.loss(model(i), t).item() for i, t in validation)
    log(f"TinyTransformer: {train_steps} steps of {batch_size}x{seq_len} bytes in "
        f"{time.perf_counter() - start:.0f} s, validation loss {validation_loss:.3f} nats/byte")

    inputs, targets = next(batches)
    saved = examples.capture_saved_activations(model, inputs, lambda out: model.loss(out, targets))
    modules = dict(model.named_modules())
    result = []
    for name, tensor in saved:
        module = modules.get(name.rsplit("#", 1)[0])
        if isinstance(module, nn.Softmax):
            category = "attention probs"
        elif isinstance(module, examples.CausalSelfAttention):
            # The matrix products save q, k, v and the dropped-out probabilities (T x T).
            square = tensor.dim() >= 2 and tensor.shape[-1] == tensor.shape[-2] == seq_len
            category = "attention probs" if square else "attention q/k/v"
        elif isinstance(module, nn.GELU):
            category = "GELU inputs"
        elif isinstance(module, nn.Linear):
            category = "Linear inputs"
        elif isinstance(module, nn.LayerNorm):
            category = "LayerNorm inputs"
        elif isinstance(module, nn.Dropout):
            category = "dropout masks (float)"
        else:
            continue  # the loss's log-softmax
        result.append((name, category, tensor))
    return result


def spread(items: list, limit: Optional[int]) -> list:
    """At most ``limit`` items, evenly spaced so that every depth of the model is seen."""
    if limit is None or len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

@dataclass
class Summary:
    category: str
    compressor: str
    relative_bound: float
    tensors: int
    raw_bytes: int
    ratio: float
    max_error_over_bound: float
    compress_mb_s: float
    decompress_mb_s: float
    zeros_kept: Optional[float]  # fraction of exact zeros decoded as exact zeros
    non_negative_decoded_negative: Optional[float]
    per_tensor_ratio: List[float] = field(default_factory=list)


def summarize(results: List[TensorResult]) -> List[Summary]:
    groups: Dict[Tuple[str, str, float], List[TensorResult]] = {}
    for result in results:
        groups.setdefault((result.category, result.compressor, result.relative_bound), []).append(result)
    summaries = []
    for (category, compressor, relative_bound), group in groups.items():
        raw = sum(r.raw_bytes for r in group)
        zeros = sum(r.zeros for r in group)
        non_negative = sum(r.non_negative for r in group)
        summaries.append(Summary(
            category=category, compressor=compressor, relative_bound=relative_bound,
            tensors=len(group), raw_bytes=raw,
            ratio=raw / sum(r.stream_bytes for r in group),
            max_error_over_bound=max(r.max_error / r.error_bound for r in group),
            compress_mb_s=raw / sum(r.compress_s for r in group) / 1e6,
            decompress_mb_s=raw / sum(r.decompress_s for r in group) / 1e6,
            zeros_kept=sum(r.zeros_kept for r in group) / zeros if zeros else None,
            non_negative_decoded_negative=(
                sum(r.decoded_negative for r in group) / non_negative if non_negative else None),
            per_tensor_ratio=[r.raw_bytes / r.stream_bytes for r in group],
        ))
    return summaries


DTYPE_BOUND = 1e-2  # the relative bound of the by-dtype table (the training schedules' final one)


def by_dtype(selected, threads: int, reps: int, problems: List[str]) -> List[Dict[str, object]]:
    """actzip on the same tensors as float32, float16 and bfloat16 (as torch.autocast saves
    them), at relative bound DTYPE_BOUND: ratio and MB/s of the dtype's bytes, on 1 and
    ``threads`` threads. A decoded finite element outside the bound is a problem."""
    import actzip

    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        raw = stream = 0
        seconds: Dict[int, Tuple[float, float]] = {}
        for _, _, tensor in selected:
            x = tensor.to(dtype)
            raw += x.nbytes
            for n in sorted({1, threads}):
                actzip.set_num_threads(n)
                compressed, compress_s = timed(lambda: actzip.compress(x, DTYPE_BOUND, mode="rel"), reps)
                decoded, decompress_s = timed(lambda: actzip.decompress(compressed), reps)
                before = seconds.get(n, (0.0, 0.0))
                seconds[n] = (before[0] + compress_s, before[1] + decompress_s)
            stream += compressed.nbytes
            finite = torch.isfinite(x)
            error = (decoded.double() - x.double())[finite].abs().max().item() if finite.any() else 0.0
            if error > compressed.error_bound:
                problems.append(f"{dtype} rel {DTYPE_BOUND:g}: max error {error:.6g} > bound {compressed.error_bound:.6g}")
        rows.append({
            "dtype": str(dtype).replace("torch.", ""),
            "ratio": raw / stream,
            "compress_mb_s": {n: raw / 1e6 / c for n, (c, _) in seconds.items()},
            "decompress_mb_s": {n: raw / 1e6 / d for n, (_, d) in seconds.items()},
        })
    actzip.set_num_threads(threads)
    return rows


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def ratio_to_bound(value: Optional[float]) -> str:
    # Fixed decimals, so that 1.0001 (a broken bound) never prints as 1.
    return "–" if value is None else f"{value:.4f}"


def percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def quotient(numerator: Optional[float], denominator: Optional[float]) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "–"
    return f"{numerator / denominator:.2f}×"


def print_tables(summaries: List[Summary], compressors: List[str], threads: int) -> str:
    index = {(s.category, s.compressor, s.relative_bound): s for s in summaries}
    keys = [(c, b) for c in CATEGORIES for b in RELATIVE_BOUNDS
            if any((c, name, b) in index for name in compressors)]

    def get(category, name, bound, attribute):
        summary = index.get((category, name, bound))
        return None if summary is None else getattr(summary, attribute)

    # actzip writes the same stream on any thread count: one column for what does not
    # depend on time, one per thread count for the speeds.
    one_thread = "actzip 1t" if "actzip 1t" in compressors else None
    many_threads = f"actzip {threads}t" if threads > 1 and f"actzip {threads}t" in compressors else None
    lossy = [name for name in compressors if name != many_threads]
    short = [name.replace(" 1t", "") for name in lossy]
    versus_sz3 = [name for name in (one_thread, many_threads) if name] if "SZ3" in compressors else []
    out = []

    rows = []
    for category, bound in keys:
        row = [category, f"{bound:g}"] + [fmt(get(category, name, bound, "ratio")) for name in lossy]
        if one_thread and versus_sz3:
            row.append(quotient(get(category, one_thread, bound, "ratio"), get(category, "SZ3", bound, "ratio")))
        rows.append(row)
    header = ["category", "rel. bound"] + short + (["actzip ÷ SZ3"] if one_thread and versus_sz3 else [])
    out.append("### Compression ratio (raw bytes / stream bytes; higher is better)\n\n" + markdown_table(header, rows))

    for attribute, title in (("compress_mb_s", "Compress"), ("decompress_mb_s", "Decompress")):
        rows = []
        for category, bound in keys:
            rows.append([category, f"{bound:g}"]
                        + [fmt(get(category, name, bound, attribute)) for name in compressors]
                        + [quotient(get(category, name, bound, attribute), get(category, "SZ3", bound, attribute))
                           for name in versus_sz3])
        header = ["category", "rel. bound"] + compressors + [f"{name} ÷ SZ3" for name in versus_sz3]
        out.append(f"### {title} throughput (MB/s of raw data, median of repetitions)\n\n"
                   + markdown_table(header, rows))

    rows = []
    for category, bound in keys:
        rows.append([category, f"{bound:g}"]
                    + [ratio_to_bound(get(category, name, bound, "max_error_over_bound")) for name in lossy]
                    + [percent(get(category, name, bound, "zeros_kept")) for name in lossy]
                    + [percent(get(category, name, bound, "non_negative_decoded_negative")) for name in lossy])
    header = (["category", "rel. bound"] + [f"max err/bound {n}" for n in short]
              + [f"zeros kept {n}" for n in short] + [f"≥0 decoded <0 {n}" for n in short])
    out.append("### Fidelity (max error / bound must be ≤ 1; zeros kept exactly; "
               "non-negative inputs decoded negative)\n\n" + markdown_table(header, rows))
    text = "\n\n".join(out)
    print(text)
    return text


# ---------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="few training steps, tensors and repetitions (a smoke check, < 2 min)")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="ResNet18Small training steps before capture (default 300, quick 20)")
    parser.add_argument("--lm-steps", type=int, default=None,
                        help="TinyTransformer training steps before capture (default 300, quick 20)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for the multi-threaded actzip runs and for training (default: all)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per tensor (default 5, quick 2)")
    parser.add_argument("--max-tensors", type=int, default=None,
                        help="tensors per category, evenly spread over depth (default all, quick 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="ResNet batch size (training and capture)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    parser.add_argument("--cache", metavar="PATH",
                        help="keep the captured activations in this file and reuse them on the next run "
                             "with the same settings (skips training)")
    args = parser.parse_args(argv)

    train_steps = args.train_steps if args.train_steps is not None else (20 if args.quick else 300)
    lm_steps = args.lm_steps if args.lm_steps is not None else (20 if args.quick else 300)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    max_tensors = args.max_tensors if args.max_tensors is not None else (2 if args.quick else None)
    threads = max(1, args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    torch.set_num_threads(threads)
    compressors, notes = [], []
    actzip_compressors, note = make_actzip_compressors(threads)
    compressors += actzip_compressors
    for made, note_peer in (make_sz3(), make_zfp()):
        if made is not None:
            compressors.append(made)
        notes.append(note_peer)
    notes.insert(0, note)
    for line in filter(None, notes):
        log(line)
    if not compressors:
        log("nothing to measure")
        return 1

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for distribution in ("actzip", "pysz", "zfpy"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(distribution)
            if module is not None and hasattr(module, "__version__"):
                versions[distribution] = module.__version__  # an in-tree build
    log(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    other_load = OtherLoad()
    copy_mb_s = memcpy_bandwidth((64 if args.quick else 256) << 20, 3 if args.quick else 7)
    log(f"memcpy ceiling (numpy copy, 1 thread): {copy_mb_s:.0f} MB/s of data copied "
        f"({2 * copy_mb_s / 1e3:.1f} GB/s read + write)")

    tensors = None
    cache_key = {"train_steps": train_steps, "lm_steps": lm_steps, "batch_size": args.batch_size,
                 "seed": args.seed, "torch": str(torch.__version__)}
    if args.cache and os.path.exists(args.cache):
        cached = torch.load(args.cache, weights_only=True)
        if cached.get("key") == cache_key:
            tensors = [tuple(entry) for entry in cached["tensors"]]
            log(f"loaded {len(tensors)} captured tensors from {args.cache}")
        else:
            log(f"{args.cache} holds tensors captured with other settings: capturing again")
    if tensors is None:
        tensors = resnet_activations(train_steps, args.batch_size, args.seed, log)
        tensors += transformer_activations(lm_steps, args.seed, log)
        if args.cache:
            os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
            torch.save({"key": cache_key, "tensors": [list(entry) for entry in tensors]}, args.cache)

    by_category: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
    for name, category, tensor in tensors:
        by_category.setdefault(category, []).append((name, tensor))
    selected = []
    for category in CATEGORIES:
        chosen = spread(by_category.get(category, []), max_tensors)
        selected += [(name, category, tensor) for name, tensor in chosen]
    del tensors, by_category

    rows = []
    for category in CATEGORIES:
        members = [t for _, c, t in selected if c == category]
        if members:
            numel = sum(t.numel() for t in members)
            zeros = sum(int((t == 0).sum()) for t in members)
            negatives = sum(int((t < 0).sum()) for t in members)
            rows.append([category, str(len(members)), f"{sum(t.nbytes for t in members) / 1e6:.1f}",
                         percent(zeros / numel), percent(negatives / numel)])
    log("\n### Tensors (float32, saved for backward by one training step)\n")
    log(markdown_table(["category", "tensors", "MB", "exact zeros", "negative"], rows) + "\n")

    results: List[TensorResult] = []
    problems: List[str] = []
    for index, (name, category, tensor) in enumerate(selected):
        x = tensor.numpy()
        finite = x[np.isfinite(x)]
        value_range = float(finite.max()) - float(finite.min()) if finite.size else 0.0
        if value_range == 0.0:
            log(f"skipped {name}: constant tensor")
            continue
        for relative_bound in RELATIVE_BOUNDS:
            error_bound = relative_bound * value_range
            decoded_by: Dict[str, Tuple[object, np.ndarray]] = {}
            for compressor in compressors:
                compressor.setup()
                result, blob, decoded = measure(compressor, name, category, x, relative_bound, error_bound, reps)
                results.append(result)
                if result.max_error > error_bound:
                    problems.append(f"{compressor.name} {name} rel {relative_bound:g}: max error "
                                    f"{result.max_error:.6g} > bound {error_bound:.6g}")
                if compressor.name.startswith("actzip"):
                    decoded_by[compressor.name] = (blob, decoded)
            if decoded_by:
                (first_name, (first_blob, first_decoded)), *others = decoded_by.items()
                problems += check_actzip_stream(first_blob, first_decoded, error_bound, f"{name} rel {relative_bound:g}")
                for other_name, (other_blob, other_decoded) in others:
                    if other_blob.to_bytes() != first_blob.to_bytes():
                        problems.append(f"{name} rel {relative_bound:g}: {first_name} and {other_name} streams differ")
                    if not np.array_equal(other_decoded.view(np.uint32), first_decoded.view(np.uint32)):
                        problems.append(f"{name} rel {relative_bound:g}: {first_name} and {other_name} decode differently")
        if (index + 1) % 10 == 0 or index + 1 == len(selected):
            log(f"measured {index + 1}/{len(selected)} tensors ({time.perf_counter() - started:.0f} s)")
    for compressor in compressors:
        if compressor.name.startswith("actzip"):
            import actzip
            actzip.set_num_threads(threads)
            break

    summaries = summarize(results)
    names = [compressor.name for compressor in compressors]
    log("")
    log(f"memcpy ceiling: {copy_mb_s:.0f} MB/s (1 thread). actzip runs on 1 and {threads} threads; "
        f"SZ3 and ZFP on 1 thread. {reps} repetitions, median.\n")
    tables = print_tables(summaries, names, threads)
    log("")
    dtype_rows: List[Dict[str, object]] = []
    if actzip_compressors:
        dtype_rows = by_dtype(selected, threads, reps, problems)
        counts = sorted({1, threads})
        dtype_table = markdown_table(
            ["dtype", "ratio", "compress MB/s " + " / ".join(f"{n}t" for n in counts),
             "decompress MB/s " + " / ".join(f"{n}t" for n in counts)],
            [[row["dtype"], fmt(row["ratio"]),
              " / ".join(f"{row['compress_mb_s'][n]:.0f}" for n in counts),
              " / ".join(f"{row['decompress_mb_s'][n]:.0f}" for n in counts)] for row in dtype_rows],
        )
        log(f"### actzip by dtype (every tensor above, rel {DTYPE_BOUND:g}; MB/s of the dtype's bytes)\n")
        log(dtype_table + "\n")
        tables += "\n\n" + dtype_table
    if problems:
        log(f"{len(problems)} CHECK(S) FAILED:")
        for line in problems:
            log("  " + line)
    elif actzip_compressors:
        log("checks passed: every bound held; actzip streams identical across thread counts and "
            "through to_bytes/from_bytes")
    else:
        log("checks passed: every peer held its bound (actzip was not measured)")
    elapsed = time.perf_counter() - started
    log(f"total time {elapsed:.0f} s")
    other = other_load.fraction()
    busy = None
    if other is not None:
        busy = f"other processes used {100 * other:.0f}% of the CPUs during the run"
        if other > 0.05:
            busy = f"warning: {busy}: the timings are noisy, rerun on an idle machine"
        log(busy)

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        report = {
            "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
            "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "versions": versions},
            "settings": {"quick": args.quick, "train_steps": train_steps, "lm_steps": lm_steps,
                         "reps": reps, "threads": threads, "max_tensors": max_tensors,
                         "batch_size": args.batch_size, "seed": args.seed,
                         "relative_bounds": list(RELATIVE_BOUNDS)},
            "memcpy_mb_s": copy_mb_s,
            "notes": [line for line in notes + [busy] if line],
            "other_processes_cpu_fraction": other,
            "summary": [asdict(s) for s in summaries],
            "by_dtype": dtype_rows,
            "per_tensor": [asdict(r) for r in results],
            "problems": problems,
            "markdown": tables,
            "elapsed_s": elapsed,
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
        log(f"wrote {args.json}")
    return 1 if problems or not actzip_compressors else 0


if __name__ == "__main__":
    sys.exit(main())
