"""Training with compressed activations against the usual ways of saving activation memory.

Side by side, in one run, on two tasks:

- ``cnn``: the ResNet-18-style CNN of ``actzip.examples`` on scikit-learn's digits
  (upsampled to 32x32), SGD with a one-cycle learning rate; metric: test accuracy.
- ``lm``: the small causal transformer of ``actzip.examples`` trained on the Python
  standard library's own source (next-byte prediction), AdamW with warm-up and cosine
  decay; metric: loss on held-out text.

Methods: ``baseline`` (plain PyTorch); actzip with the ``constant``, ``gradual``,
``adaptive`` and ``budget`` schedules (``--bound``, default 1e-2, relative; the budget is
the baseline's peak divided by ``--budget-factor``, default 12); ``checkpoint``
(``torch.utils.checkpoint`` around each residual stage / transformer block) and
``save_on_cpu`` (``torch.autograd.graph.save_on_cpu``); and ``copy``, a reference rather
than a way to save memory: saved-tensor hooks that copy each tensor actzip would code in
forward and hand the copy back in backward. That reads and writes every coded byte once,
the memory traffic of a compressor that reads the activations in forward and writes them
back in backward, with no coding at all. On request only,
``gradual_own_threads``: the gradual schedule with the codec on actzip's own threads
rather than torch's OpenMP workers (see cpp/cpu/thread_pool.h); and
``gradual_sample_always``: the gradual schedule sampling every tensor at every step, where
actzip otherwise codes a CPU tensor with the predictors and codebooks it sampled at an
earlier step (see ``_REUSE_STEPS`` in actzip/training.py).

Every method starts from the same weights and sees the same batches; the methods take
their steps in turn (step 1 of each, then step 2...), so a change of load on the machine
weighs on all of them alike. Columns:

- metric: test accuracy (cnn) or held-out loss (lm) after the last step;
- peak saved: the most bytes held for backward at once during a step, counted by actzip's
  accounting (distinct saved tensors, parameters excluded; see actzip.training). actzip:
  its last step. baseline, checkpoint and copy: their first step, measured with nothing
  compressed (for checkpoint, the stage inputs it keeps plus the tensors one stage saves
  while it is recomputed). save_on_cpu: bytes it holds in host memory; on a CPU run that is
  the same memory as the device's, so it saves nothing there;
- step time: mean wall time of a step (forward, backward, optimizer, actzip's step) after
  3 warm-up steps, and its ratio to baseline;
- codec ms: actzip's mean milliseconds a step compressing + decompressing.

Usage::

    python benchmarks/bench_training.py                       # both tasks, every method
    python benchmarks/bench_training.py --tasks cnn --methods baseline,gradual --steps-cnn 60
    python benchmarks/bench_training.py --methods baseline,gradual,gradual_own_threads
    python benchmarks/bench_training.py --methods baseline,gradual,gradual_sample_always
    python benchmarks/bench_training.py --json benchmarks/out/training.json
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import actzip  # noqa: E402
from actzip import telemetry, training  # noqa: E402
from actzip.demo import evaluate_accuracy, make_schedule, mean_step_seconds, minibatches  # noqa: E402
from actzip.examples import (  # noqa: E402
    ResNet18Small,
    TinyTransformer,
    load_digits_images,
    load_text_corpus,
    split_text,
    text_batches,
)
from actzip.training import ActivationCompressor, compressed_activations  # noqa: E402

METHODS = (
    "baseline", "constant", "gradual", "adaptive", "budget", "checkpoint", "save_on_cpu", "copy",
    "gradual_own_threads", "gradual_sample_always",
)
DEFAULT_METHODS = METHODS[:-2]
# What compressed_activations() leaves uncompressed by default; the copy method follows it.
ACTZIP_MIN_BYTES = inspect.signature(compressed_activations).parameters["min_bytes"].default
ACTZIP_METHODS = ("constant", "gradual", "adaptive", "budget", "gradual_own_threads", "gradual_sample_always")


# ---------------------------------------------------------------------------------------
# Methods other than actzip
# ---------------------------------------------------------------------------------------

class MeasuredSaveOnCpu(torch.autograd.graph.saved_tensors_hooks):
    """``torch.autograd.graph.save_on_cpu`` with the bytes it holds on the host counted
    by actzip's accounting (a measure-only compressor), deduplicated the same way."""

    def __init__(self, meter: ActivationCompressor, pin_memory: bool) -> None:
        inner = torch.autograd.graph.save_on_cpu(pin_memory=pin_memory)

        def pack(tensor: torch.Tensor):
            device, host = inner.pack_hook(tensor)
            return device, meter._pack(host)

        def unpack(packed):
            device, holder = packed
            return inner.unpack_hook((device, meter._unpack(holder)))

        super().__init__(pack, unpack)


class CopySaved(torch.autograd.graph.saved_tensors_hooks):
    """The ``copy`` method: each tensor actzip would code (floating, at least ``min_bytes``,
    strided, not one of the model's parameters or buffers) is copied in forward, each
    storage view once, and the copy is what backward gets. One of these serves one step."""

    def __init__(self, model: nn.Module, min_bytes: int) -> None:
        own = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
        copies: Dict[Any, Any] = {}  # key -> (the storage, weakly; its copy)

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if (
                not tensor.is_floating_point()
                or tensor.layout is not torch.strided
                or tensor.numel() * tensor.element_size() < min_bytes
                or tensor.data_ptr() in own
            ):
                return tensor
            storage = tensor.untyped_storage()
            key = training._view_key(tensor, storage)  # actzip's own, so both share the same saves
            entry = copies.get(key)
            if entry is None or entry[0]() is not storage:
                entry = copies[key] = (weakref.ref(storage), tensor.clone())
            return entry[1]

        super().__init__(pack, lambda copy: copy)


def checkpointed_forward(task: str) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The model's forward with each residual stage (cnn) or block (lm) checkpointed.

    Reentrant checkpointing saves each segment's input through the active saved-tensor
    hooks and recomputes the segment inside backward under them, so the measure-only
    compressor sees exactly what checkpointing keeps."""
    checkpoint = torch.utils.checkpoint.checkpoint

    if task == "cnn":
        def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            out = model.relu(model.bn1(model.conv1(x)))
            for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
                out = checkpoint(stage, out, use_reentrant=True)
            return model.fc(torch.flatten(model.pool(out), 1))
        return forward

    def forward(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        x = model.dropout(model.token_embedding(tokens) + model.position_embedding(positions))
        for block in model.blocks:
            x = checkpoint(block, x, use_reentrant=True)
        return model.head(model.ln_final(x))
    return forward


@contextlib.contextmanager
def own_threads(on: bool):
    """Runs the codec on actzip's own threads instead of torch's OpenMP workers while
    active (the ``gradual_own_threads`` method: what the thread runtime is worth)."""
    if not on:
        yield
        return
    actzip._core.use_own_threads(True)
    try:
        yield
    finally:
        actzip._core.use_own_threads(False)


@contextlib.contextmanager
def sample_always(on: bool):
    """Samples every tensor at every step while active (the ``gradual_sample_always``
    method: what coding with an earlier step's choices is worth)."""
    if not on:
        yield
        return
    saved = training._REUSE_STEPS
    training._REUSE_STEPS = 0
    try:
        yield
    finally:
        training._REUSE_STEPS = saved


# ---------------------------------------------------------------------------------------
# One method's training run, a step at a time
# ---------------------------------------------------------------------------------------

class Run:
    """One method training its own copy of the model on its own copy of the batch stream.

    The runs of a task take their steps in turn (step 1 of every method, then step 2...),
    so that a change of load on the machine weighs on every method alike."""

    def __init__(
        self,
        task: str,
        method: str,
        spec: Dict[str, Any],
        *,
        bound: float,
        budget_bytes: Callable[[], int],
        device: torch.device,
    ) -> None:
        self.task, self.method, self.spec, self.device = task, method, spec, device
        self.steps = spec["steps"]
        self.model = spec["make_model"]()
        self.optimizer, self.scheduler = spec["make_optimizer"](self.model)
        self.stream = spec["batches"]()
        self.loss_fn = spec["loss_fn"]
        self.clip = spec.get("clip")
        self.forward = checkpointed_forward(task) if method == "checkpoint" else (lambda m, x: m(x))
        self.bound = bound
        self.budget_bytes = budget_bytes
        self.compressor: Optional[ActivationCompressor] = None  # made at the first step
        self.meter: Optional[ActivationCompressor] = None
        if method == "save_on_cpu":
            self.meter = compressed_activations(self.model, schedule=None)
        self.step_seconds: List[float] = []
        self.measured: Optional[Dict[str, Any]] = None
        self.losses: List[float] = []
        # Each run keeps its own random state (dropout), the same for every method.
        generator = torch.Generator().manual_seed(spec["seed"])
        self.rng_state = generator.get_state()
        self.cuda_rng_state = None
        if device.type == "cuda":
            self.cuda_rng_state = torch.cuda.get_rng_state(device)

    def _make_compressor(self) -> None:
        budget = self.budget_bytes() if self.method == "budget" else None
        name = "gradual" if self.method.startswith("gradual") else self.method
        schedule = make_schedule(name, self.steps, final_bound=self.bound, budget_bytes=budget)
        self.compressor = compressed_activations(self.model, schedule=schedule, mode="rel")
        if self.method == "adaptive":
            x, y = next(self.spec["batches"]())
            x, y = x.to(self.device), y.to(self.device)
            self.compressor.calibrate(lambda: self.loss_fn(self.model(x), y))

    def step(self) -> float:
        torch.set_rng_state(self.rng_state)
        if self.cuda_rng_state is not None:
            torch.cuda.set_rng_state(self.cuda_rng_state, self.device)
        try:
            return self._step()
        finally:
            self.rng_state = torch.get_rng_state()
            if self.cuda_rng_state is not None:
                self.cuda_rng_state = torch.cuda.get_rng_state(self.device)

    def _step(self) -> float:
        if self.method in ACTZIP_METHODS and self.compressor is None:
            self._make_compressor()
        step = len(self.step_seconds)
        x, y = next(self.stream)
        x, y = x.to(self.device), y.to(self.device)
        if self.method == "save_on_cpu":
            hooks: Any = MeasuredSaveOnCpu(self.meter, pin_memory=self.device.type == "cuda")
        elif self.method in ("baseline", "checkpoint", "copy") and step == 0:
            hooks = compressed_activations(self.model, schedule=None)
        elif self.method == "copy":
            hooks = CopySaved(self.model, min_bytes=ACTZIP_MIN_BYTES)
        else:
            hooks = contextlib.nullcontext()
        # Entering the compressor (module hooks) is outside the timed part: a real run
        # enters it once.
        outer = self.compressor if self.compressor is not None else contextlib.nullcontext()
        with outer, own_threads(self.method == "gradual_own_threads"), sample_always(self.method == "gradual_sample_always"):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            with hooks:
                loss = self.loss_fn(self.forward(self.model, x), y)
                loss.backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.compressor is not None:
                self.compressor.step(loss=loss.detach())
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.step_seconds.append(time.perf_counter() - start)
        if isinstance(hooks, ActivationCompressor):
            hooks.step()
            self.measured = hooks.history[0]
        if self.meter is not None:
            self.meter.step()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def result(self) -> Dict[str, Any]:
        extra: Dict[str, Any] = {}
        if self.compressor is not None:
            history = self.compressor.history
            final = history[-1]
            peak_raw, peak_saved = final["peak_raw_bytes"], final["peak_compressed_bytes"]
            extra = {
                "final_requested_bounds": final["requested_bounds"],
                "compress_seconds_per_step": sum(r["compress_seconds"] for r in history) / len(history),
                "decompress_seconds_per_step": sum(r["decompress_seconds"] for r in history) / len(history),
                "failures": sum(r["failures"] for r in history),
            }
            if self.method == "adaptive":
                extra["adaptive_a"] = self.compressor.schedule.a
        elif self.meter is not None:
            final = self.meter.history[-1]
            peak_raw, peak_saved = final["peak_raw_bytes"], final["peak_compressed_bytes"]
            extra = {"held_in": "host memory"}
        else:
            peak_raw, peak_saved = self.measured["peak_raw_bytes"], self.measured["peak_compressed_bytes"]
        return {
            "task": self.task,
            "method": self.method,
            "metric": self.spec["evaluate"](self.model),
            "final_train_loss": self.losses[-1],
            "peak_raw_bytes": peak_raw,
            "peak_saved_bytes": peak_saved,
            "step_seconds": mean_step_seconds(self.step_seconds),
            "median_step_seconds": sorted(self.step_seconds)[len(self.step_seconds) // 2],
            **extra,
        }


def _progress(total: int, description: str, enabled: bool) -> Callable[[float], None]:
    if not enabled:
        return lambda loss: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

        def update(loss: float) -> None:
            bar.set_postfix_str(f"loss={loss:.3f}", refresh=False)
            bar.update(1)
            if bar.n >= total:
                bar.close()
        return update
    counter = [0]

    def update(loss: float) -> None:
        counter[0] += 1
        if counter[0] % max(1, total // 5) == 0 or counter[0] == total:
            print(f"  {description}: step {counter[0]}/{total} loss {loss:.3f}", flush=True)
    return update


# ---------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------

def cnn_task(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    x_train, y_train, x_test, y_test = load_digits_images(32, seed=args.seed)

    def make_model() -> nn.Module:
        torch.manual_seed(args.seed)
        return ResNet18Small(num_classes=10, in_channels=1, width=32).to(device)

    def make_optimizer(model: nn.Module):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=0.05, total_steps=args.steps_cnn, pct_start=0.15, anneal_strategy="cos"
        )
        return optimizer, scheduler

    return {
        "make_model": make_model,
        "batches": lambda: minibatches(x_train, y_train, 64, seed=args.seed + 1),
        "loss_fn": F.cross_entropy,
        "make_optimizer": make_optimizer,
        "evaluate": lambda model: evaluate_accuracy(model, x_test, y_test),
        "steps": args.steps_cnn,
        "seed": args.seed,
        "metric": "test accuracy (%)",
        "higher_is_better": True,
    }


def lm_task(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    text = load_text_corpus(max_chars=args.corpus_chars, seed=args.seed)
    train_text, validation_text = split_text(text, 0.1)
    seq_len, batch_size = 128, 32
    validation = list(
        text_batches(validation_text, seq_len, batch_size, generator=torch.Generator().manual_seed(12345), num_batches=16)
    )

    def make_model() -> nn.Module:
        torch.manual_seed(args.seed)
        return TinyTransformer(vocab=256, d_model=128, n_heads=4, n_layers=2, seq_len=seq_len, dropout=0.1).to(device)

    def make_optimizer(model: nn.Module):
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
        warmup = max(1, args.steps_lm // 20)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, args.steps_lm - warmup)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return TinyTransformer.loss(logits, targets)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        model.eval()
        total = sum(float(loss_fn(model(x.to(device)), y.to(device))) for x, y in validation)
        model.train()
        return total / len(validation)

    return {
        "make_model": make_model,
        "batches": lambda: text_batches(train_text, seq_len, batch_size, generator=torch.Generator().manual_seed(args.seed + 1)),
        "loss_fn": loss_fn,
        "make_optimizer": make_optimizer,
        "evaluate": evaluate,
        "steps": args.steps_lm,
        "seed": args.seed,
        "metric": "held-out loss",
        "higher_is_better": False,
        "clip": 1.0,
    }


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def table(results: List[Dict[str, Any]], metric_name: str, higher_is_better: bool) -> str:
    baseline = next(r for r in results if r["method"] == "baseline")
    header = ["method", metric_name, "vs baseline", "peak saved", "reduction", "step time", "time ratio", "codec ms"]
    rows = []
    for r in results:
        if higher_is_better:
            difference = f"{r['metric'] - baseline['metric']:+.2f} pt"
        else:
            difference = f"{100 * (r['metric'] / baseline['metric'] - 1):+.2f} %"
        peak = telemetry.format_bytes(r["peak_saved_bytes"])
        if r.get("held_in"):
            peak += " (host)"
        rows.append(
            [
                r["method"] if r["method"] not in ACTZIP_METHODS else f"actzip {r['method']}",
                f"{r['metric']:.2f}" if higher_is_better else f"{r['metric']:.4f}",
                "" if r is baseline else difference,
                peak,
                f"{baseline['peak_raw_bytes'] / r['peak_saved_bytes']:.1f}x" if r["peak_saved_bytes"] else "inf",
                f"{r['step_seconds'] * 1e3:.0f} ms",
                f"{r['step_seconds'] / baseline['step_seconds']:.2f}",
                (
                    f"{r['compress_seconds_per_step'] * 1e3:.0f} + {r['decompress_seconds_per_step'] * 1e3:.0f}"
                    if "compress_seconds_per_step" in r
                    else ""
                ),
            ]
        )
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines.extend("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="cnn,lm", help="comma-separated: cnn, lm (default both)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {', '.join(METHODS)} (default: all but the last two)",
    )
    parser.add_argument("--steps-cnn", type=int, default=120, help="training steps on the digits CNN (default 120)")
    parser.add_argument("--steps-lm", type=int, default=150, help="training steps on the transformer (default 150)")
    parser.add_argument("--corpus-chars", type=int, default=2_000_000, help="characters of stdlib source (default 2e6)")
    parser.add_argument("--bound", type=float, default=1e-2, help="final relative bound (default 1e-2)")
    parser.add_argument("--budget-factor", type=float, default=12.0, help="budget = baseline peak / this (default 12)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods: {', '.join(unknown)}")
    if "baseline" not in methods:
        methods.insert(0, "baseline")
    methods.sort(key=METHODS.index)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    print(
        f"actzip {actzip.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"codec threads {actzip.get_num_threads()} ({actzip._core.parallel_runtime()}), device {device}"
    )
    report: Dict[str, Any] = {"config": vars(args), "results": {}}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if task not in ("cnn", "lm"):
            parser.error(f"unknown task {task!r}")
        spec = (cnn_task if task == "cnn" else lm_task)(args, device)
        started = time.perf_counter()
        runs: List[Run] = []

        def budget_bytes() -> int:  # the baseline's first step has run by then
            return int(runs[0].measured["peak_raw_bytes"] / args.budget_factor)

        runs = [Run(task, method, spec, bound=args.bound, budget_bytes=budget_bytes, device=device) for method in methods]
        bar = _progress(spec["steps"], f"{task} ({len(runs)} methods in turn)", not args.no_progress)
        for _ in range(spec["steps"]):
            losses = [run.step() for run in runs]
            bar(losses[0])
        results = []
        for run in runs:
            result = run.result()
            results.append(result)
            print(
                f"  {task} {run.method}: {spec['metric']} {result['metric']:.4f}, peak saved "
                f"{telemetry.format_bytes(result['peak_saved_bytes'])}, step {result['step_seconds'] * 1e3:.0f} ms",
                flush=True,
            )
        title = (
            f"\n{task}: {'ResNet18Small on digits' if task == 'cnn' else 'TinyTransformer on stdlib source'}, "
            f"{spec['steps']} steps ({time.perf_counter() - started:.0f} s)"
        )
        print(title)
        print(table(results, spec["metric"], spec["higher_is_better"]))
        report["results"][task] = results
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
