"""The demo: train a small ResNet on scikit-learn's digits with and without actzip.

``python -m actzip demo`` (or ``actzip demo``) trains the same ResNet-18-style CNN twice
from the same initial weights on the same batches: once as usual (the baseline), once
with the activations autograd saves compressed on a schedule. It prints a table (test
accuracy, peak bytes saved for backward uncompressed and as held, their ratio, step time)
and writes, under ``--out``:

- ``demo.json``: the configuration, the numbers of the table and actzip's history;
- ``demo.png``: compression ratio and bound per layer over the steps (needs matplotlib);
- ``history.csv``: actzip's history, one row per step and layer.

The baseline's peak is measured by the same accounting with nothing compressed, on its
first step only, so that its step time is that of plain PyTorch.

Everything is offline: the digits ship inside scikit-learn (``pip install actzip[demo]``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import telemetry
from .schedule import Adaptive, Constant, Gradual, MemoryBudget, Schedule
from .training import ActivationCompressor, compressed_activations

__all__ = ["run_demo", "train_classifier", "evaluate_accuracy", "minibatches", "make_schedule", "SCHEDULES"]

#: --schedule choices
SCHEDULES = ("gradual", "constant", "adaptive", "budget")
DEFAULT_STEPS = 100


def minibatches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled minibatches (a new permutation each epoch, drawn from ``seed``);
    incomplete last batches are dropped so every step has the same shape."""
    generator = torch.Generator().manual_seed(seed)
    count = x.shape[0]
    if count < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {count} training samples")
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += int((logits.argmax(dim=1).cpu() == y[start : start + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / x.shape[0]


class _Progress:
    """tqdm when installed, a printed line every tenth of the run otherwise."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.count = 0
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=description, leave=True, dynamic_ncols=True)

    def update(self, **values: Any) -> None:
        self.count += 1
        if not self.enabled:
            return
        text = " ".join(f"{key}={value}" for key, value in values.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.count == self.total or self.count % max(1, self.total // 10) == 0:
            print(f"{self.description}: step {self.count}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_classifier(
    model: nn.Module,
    batches: Iterator[Tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float = 0.05,
    device: torch.device = torch.device("cpu"),
    compressor: Optional[ActivationCompressor] = None,
    measure_first_step: bool = False,
    forward: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None,
    context: Optional[Callable[[], Any]] = None,
    progress: bool = True,
    description: str = "train",
    min_bytes: int = 65536,
) -> Dict[str, Any]:
    """Train with SGD (momentum 0.9, Nesterov, weight decay 5e-4, one-cycle learning rate)
    and cross-entropy, one batch per step.

    ``compressor``: an :class:`ActivationCompressor` active for the whole run (stepped with
    the loss). ``measure_first_step``: measure what autograd saves on the first step (with
    a measure-only compressor) and nothing after. ``forward(model, x)`` replaces
    ``model(x)`` (for checkpointing wrappers); ``context()`` is entered around each step
    (for other saved-tensor hooks). Returns losses, step times and the first step's
    measurement.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.15, anneal_strategy="cos"
    )
    forward = forward or (lambda m, x: m(x))
    bar = _Progress(steps, description, progress)
    losses: List[float] = []
    step_seconds: List[float] = []
    measured: Optional[Dict[str, Any]] = None
    outer = compressor if compressor is not None else contextlib.nullcontext()
    try:
        with outer:
            for step in range(steps):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                meter = None
                if measure_first_step and step == 0:
                    meter = compressed_activations(model, schedule=None, min_bytes=min_bytes)
                inner = context() if context is not None else contextlib.nullcontext()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with meter if meter is not None else contextlib.nullcontext(), inner:
                    loss = F.cross_entropy(forward(model, x), y)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if compressor is not None:
                    compressor.step(loss=loss.detach())
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                step_seconds.append(time.perf_counter() - start)
                if meter is not None:
                    meter.step()
                    measured = meter.history[0]
                loss_value = float(loss.detach())
                losses.append(loss_value)
                postfix = {"loss": f"{loss_value:.3f}"}
                if compressor is not None and compressor.history:
                    record = compressor.history[-1]
                    if record["peak_compressed_bytes"]:
                        postfix["ratio"] = f"{record['peak_raw_bytes'] / record['peak_compressed_bytes']:.1f}"
                bar.update(**postfix)
    finally:
        bar.close()
    return {"losses": losses, "step_seconds": step_seconds, "measured": measured}


def mean_step_seconds(step_seconds: List[float], warmup: int = 3) -> float:
    """Mean time of a step, without the first ``warmup`` steps (allocator and caches)."""
    timed = step_seconds[warmup:] if len(step_seconds) > warmup else step_seconds
    return sum(timed) / len(timed)


def make_schedule(
    name: str, steps: int, *, final_bound: float = 1e-2, budget_bytes: Optional[int] = None
) -> Schedule:
    """The schedules the demo and the benchmark compare.

    ``gradual``: 1e-4 to ``final_bound`` over the first half of the run, then constant;
    ``constant``: ``final_bound`` throughout; ``adaptive``: COMET's controller updated
    every tenth of the run (calibrate it before training); ``budget``: per-layer bounds
    under ``budget_bytes``.
    """
    if name == "gradual":
        return Gradual(1e-4, final_bound, 0, max(1, steps // 2))
    if name == "constant":
        return Constant(final_bound)
    if name == "adaptive":
        return Adaptive(1e-3, interval=max(1, steps // 10), max_bound=max(final_bound, 1e-3))
    if name == "budget":
        if budget_bytes is None:
            raise ValueError("the budget schedule needs budget_bytes")
        return MemoryBudget(budget_bytes, initial=1e-3, max_bound=max(final_bound * 5, 5e-2))
    raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def _format_row(cells: List[str], widths: List[int]) -> str:
    return "  ".join([cells[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])])


def results_table(rows: List[Dict[str, Any]]) -> str:
    """The demo's table from result dicts (run, test_accuracy, peak_raw_bytes,
    peak_saved_bytes, step_seconds)."""
    baseline_time = rows[0]["step_seconds"]
    header = ["run", "test acc", "peak saved (raw)", "peak saved (held)", "ratio", "step time"]
    lines = []
    for row in rows:
        ratio = row["peak_raw_bytes"] / row["peak_saved_bytes"] if row["peak_saved_bytes"] else math.inf
        overhead = 100.0 * (row["step_seconds"] / baseline_time - 1.0)
        time_text = f"{row['step_seconds'] * 1e3:.0f} ms"
        if row is not rows[0]:
            time_text += f" ({overhead:+.0f} %)"
        lines.append(
            [
                row["run"],
                f"{row['test_accuracy']:.2f} %",
                telemetry.format_bytes(row["peak_raw_bytes"]),
                telemetry.format_bytes(row["peak_saved_bytes"]),
                f"{ratio:.1f}",
                time_text,
            ]
        )
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    out = [_format_row(header, widths), "  ".join("-" * w for w in widths)]
    out.extend(_format_row(line, widths) for line in lines)
    return "\n".join(out)


def run_demo(
    *,
    steps: int = DEFAULT_STEPS,
    schedule: str = "gradual",
    device: Optional[str] = None,
    out: "os.PathLike[str] | str" = "actzip-demo",
    batch_size: int = 64,
    width: int = 32,
    image_size: int = 32,
    final_bound: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    print_fn: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Run the demo and return its numbers (also written to ``out/demo.json``)."""
    from .examples import ResNet18Small, load_digits_images

    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_obj = torch.device(device)
    if device_obj.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = load_digits_images(image_size, seed=seed)
    print_fn(
        f"actzip demo: ResNet18Small(width={width}) on scikit-learn digits upsampled to "
        f"{image_size}x{image_size} ({x_train.shape[0]} train, {x_test.shape[0]} test images), "
        f"{steps} steps of {batch_size} on {device_obj}, schedule {schedule}"
    )

    def fresh_model() -> nn.Module:
        torch.manual_seed(seed)
        return ResNet18Small(num_classes=10, in_channels=1, width=width).to(device_obj)

    # Baseline.
    model = fresh_model()
    started = time.perf_counter()
    baseline = train_classifier(
        model,
        minibatches(x_train, y_train, batch_size, seed=seed + 1),
        steps=steps,
        device=device_obj,
        measure_first_step=True,
        progress=progress,
        description="baseline",
    )
    baseline_seconds = time.perf_counter() - started
    baseline_accuracy = evaluate_accuracy(model, x_test, y_test)
    raw_peak = baseline["measured"]["peak_raw_bytes"]

    # actzip.
    model = fresh_model()
    chosen = make_schedule(schedule, steps, final_bound=final_bound, budget_bytes=raw_peak // 12)
    compressor = compressed_activations(model, schedule=chosen, mode="rel")
    if schedule == "adaptive":
        calibration_x, calibration_y = next(minibatches(x_train, y_train, batch_size, seed=seed + 2))
        calibration_x, calibration_y = calibration_x.to(device_obj), calibration_y.to(device_obj)
        compressor.calibrate(lambda: F.cross_entropy(model(calibration_x), calibration_y))
        print_fn(f"Adaptive calibrated: a = {chosen.a:.3g} (median over {len(chosen.calibration)} layers)")
    started = time.perf_counter()
    compressed = train_classifier(
        model,
        minibatches(x_train, y_train, batch_size, seed=seed + 1),
        steps=steps,
        device=device_obj,
        compressor=compressor,
        progress=progress,
        description=f"actzip {schedule}",
    )
    compressed_seconds = time.perf_counter() - started
    compressed_accuracy = evaluate_accuracy(model, x_test, y_test)
    history = compressor.history
    final = history[-1]

    rows = [
        {
            "run": "baseline",
            "test_accuracy": baseline_accuracy,
            "peak_raw_bytes": raw_peak,
            "peak_saved_bytes": raw_peak,
            "step_seconds": mean_step_seconds(baseline["step_seconds"]),
            "train_seconds": baseline_seconds,
            "final_loss": baseline["losses"][-1],
        },
        {
            "run": f"actzip {schedule}",
            "test_accuracy": compressed_accuracy,
            "peak_raw_bytes": final["peak_raw_bytes"],
            "peak_saved_bytes": final["peak_compressed_bytes"],
            "step_seconds": mean_step_seconds(compressed["step_seconds"]),
            "train_seconds": compressed_seconds,
            "final_loss": compressed["losses"][-1],
            "final_requested_bounds": final["requested_bounds"],
            "compress_seconds_per_step": sum(r["compress_seconds"] for r in history) / len(history),
            "decompress_seconds_per_step": sum(r["decompress_seconds"] for r in history) / len(history),
            "failures": sum(r["failures"] for r in history),
        },
    ]
    table = results_table(rows)
    print_fn("")
    print_fn(table)
    print_fn(
        "peak saved: the most bytes held for backward at once during a step (actzip: its "
        "last step); step time: mean wall time of a training step after 3 warm-up steps"
    )

    result: Dict[str, Any] = {
        "config": {
            "steps": steps,
            "schedule": schedule,
            "schedule_repr": repr(chosen),
            "device": str(device_obj),
            "batch_size": batch_size,
            "width": width,
            "image_size": image_size,
            "final_bound": final_bound,
            "seed": seed,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "runs": rows,
        "table": table,
        "history": history,
    }
    with open(out_dir / "demo.json", "w") as stream:
        json.dump(result, stream, indent=1, default=float)
    compressor.to_csv(out_dir / "history.csv")
    written = [out_dir / "demo.json", out_dir / "history.csv"]
    try:
        telemetry.plot(history, out_dir / "demo.png", title=f"actzip {schedule} on the digits ResNet")
        written.append(out_dir / "demo.png")
    except ImportError:
        print_fn("matplotlib is not installed: no plot (pip install actzip[demo])")
    print_fn("wrote " + ", ".join(str(path) for path in written))
    return result
