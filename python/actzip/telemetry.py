"""What compression did, step by step: tables, CSV and plots of ``ActivationCompressor.history``.

Each history record is a dict for one training step:

==========================  ==========================================================
``step``                    step index, from 0
``loss``                    the loss given to ``step(loss=...)``, or None
``raw_bytes``               bytes of the distinct tensors saved this step, uncompressed
``compressed_bytes``        bytes held for them instead (streams, packed masks, tensors
                            kept as they are)
``peak_raw_bytes``          peak over the step of the raw bytes alive (held by autograd)
``peak_compressed_bytes``   peak over the step of the bytes actually held
``error_bounds``            layer -> absolute bound the codec honoured (the largest over
                            the layer's compressed tensors)
``requested_bounds``        layer -> bound asked of the codec, in the compressor's mode
``layer_raw_bytes``         layer -> raw bytes saved this step
``layer_compressed_bytes``  layer -> bytes held for them
``compress_seconds``        time spent compressing this step
``decompress_seconds``      time spent decompressing (during backward)
``tensors_compressed``      tensors compressed
``tensors_shared``          saves that reused a tensor already packed this step
``tensors_kept``            tensors kept as they are (small, integer, excluded)
``masks_packed``            bool tensors packed to one bit a value
``failures``                tensors the codec failed on (kept uncompressed)
``choices_reused``          CPU tensors coded with the predictors and codebooks sampled
                            at an earlier step (no sampling pass)
==========================  ==========================================================

:func:`plot` needs matplotlib (``pip install actzip[demo]``).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["summarize", "write_csv", "plot", "format_bytes"]


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ratio(raw: float, stored: float) -> float:
    return raw / stored if stored > 0 else (math.inf if raw > 0 else 1.0)


def _layers_in_order(history: Sequence[Mapping[str, Any]]) -> List[str]:
    layers: Dict[str, None] = {}
    for record in history:
        for layer in record.get("layer_raw_bytes", {}):
            layers.setdefault(layer, None)
    return list(layers)


def summarize(
    history: Sequence[Mapping[str, Any]],
    *,
    layer_types: Optional[Mapping[str, type]] = None,
    last: int = 0,
) -> str:
    """A per-layer table and totals, as text.

    Per layer: module type (when known), raw and compressed bytes per step and their
    ratio, averaged over the steps, the ratio of the last step, and the last bounds
    (requested and absolute). ``last`` > 0 restricts the averages to the last steps.
    """
    if not history:
        return "actzip: no steps recorded"
    records = list(history[-last:] if last > 0 else history)
    steps = len(records)
    layer_types = layer_types or {}
    rows = []
    for layer in _layers_in_order(records):
        raw = sum(r["layer_raw_bytes"].get(layer, 0) for r in records)
        stored = sum(r["layer_compressed_bytes"].get(layer, 0) for r in records)
        final = records[-1]
        final_raw = final["layer_raw_bytes"].get(layer, 0)
        final_stored = final["layer_compressed_bytes"].get(layer, 0)
        requested = final["requested_bounds"].get(layer)
        absolute = final["error_bounds"].get(layer)
        module_type = layer_types.get(layer)
        rows.append(
            [
                layer,
                module_type.__name__ if module_type is not None else "",
                format_bytes(raw / steps),
                format_bytes(stored / steps),
                f"{_ratio(raw, stored):.1f}",
                f"{_ratio(final_raw, final_stored):.1f}" if final_raw else "-",
                f"{requested:.2e}" if requested is not None else "-",
                f"{absolute:.2e}" if absolute is not None else "-",
            ]
        )
    header = ["layer", "type", "raw/step", "stored/step", "ratio", "last ratio", "bound", "abs bound"]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        right = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:])]
        return "  ".join(left + right)

    out = [line(header), "  ".join("-" * width for width in widths)]
    out.extend(line(row) for row in rows)
    final = records[-1]
    peak_raw = max(r["peak_raw_bytes"] for r in records)
    compress_time = sum(r["compress_seconds"] for r in records) / steps
    decompress_time = sum(r["decompress_seconds"] for r in records) / steps
    failures = sum(r["failures"] for r in records)
    out.append("")
    out.append(
        f"steps {records[0]['step']}-{final['step']} ({steps}); "
        f"saved per step {format_bytes(sum(r['raw_bytes'] for r in records) / steps)} raw -> "
        f"{format_bytes(sum(r['compressed_bytes'] for r in records) / steps)} "
        f"(ratio {_ratio(sum(r['raw_bytes'] for r in records), sum(r['compressed_bytes'] for r in records)):.1f})"
    )
    out.append(
        f"peak held for backward: {format_bytes(peak_raw)} raw, last step "
        f"{format_bytes(final['peak_compressed_bytes'])} compressed "
        f"(ratio {_ratio(final['peak_raw_bytes'], final['peak_compressed_bytes']):.1f})"
    )
    out.append(
        f"time per step: compress {compress_time * 1e3:.1f} ms, decompress {decompress_time * 1e3:.1f} ms; "
        f"failures {failures}"
    )
    return "\n".join(out)


_CSV_COLUMNS = [
    "step",
    "layer",
    "layer_raw_bytes",
    "layer_compressed_bytes",
    "requested_bound",
    "error_bound",
    "loss",
    "raw_bytes",
    "compressed_bytes",
    "peak_raw_bytes",
    "peak_compressed_bytes",
    "compress_seconds",
    "decompress_seconds",
    "tensors_compressed",
    "tensors_shared",
    "tensors_kept",
    "masks_packed",
    "failures",
    "choices_reused",
]


def write_csv(history: Sequence[Mapping[str, Any]], path: "os.PathLike[str] | str") -> None:
    """Write the history in long form: one row per step and layer.

    The step-wide columns (loss, totals, peaks, times, counts) repeat on each row of a
    step; a step without any layer gets one row with an empty ``layer``.
    """
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        for record in history:
            common = {key: record.get(key) for key in _CSV_COLUMNS[6:]}
            if common["loss"] is not None:
                common["loss"] = float(common["loss"])
            layers = list(record.get("layer_raw_bytes", {})) or [""]
            for layer in layers:
                writer.writerow(
                    {
                        "step": record["step"],
                        "layer": layer,
                        "layer_raw_bytes": record["layer_raw_bytes"].get(layer, ""),
                        "layer_compressed_bytes": record["layer_compressed_bytes"].get(layer, ""),
                        "requested_bound": record["requested_bounds"].get(layer, ""),
                        "error_bound": record["error_bounds"].get(layer, ""),
                        **common,
                    }
                )


def plot(
    history: Sequence[Mapping[str, Any]],
    path: "os.PathLike[str] | str",
    *,
    title: Optional[str] = None,
    max_legend: int = 12,
) -> None:
    """Draw compression ratio and bounds per layer over the steps into an image file.

    Three panels sharing the step axis: the compression ratio of each layer (thin lines)
    and of the peak bytes held (thick black line); the requested bound of each layer; the
    absolute bound of each layer (both log scale). The layers are named in a legend when
    there are at most ``max_legend`` of them. The format follows ``path``'s suffix (PNG,
    SVG, PDF). Uses matplotlib without touching pyplot's global state.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "actzip.plot needs matplotlib: pip install matplotlib (or actzip[demo])"
        ) from error
    if not history:
        raise ValueError("plot: the history is empty")
    layers = [
        layer
        for layer in _layers_in_order(history)
        if any(layer in record["requested_bounds"] for record in history)
    ]
    figure = Figure(figsize=(9, 9), constrained_layout=True)
    FigureCanvasAgg(figure)
    ratio_axes, requested_axes, absolute_axes = figure.subplots(3, 1, sharex=True)
    colors = _colors(len(layers))
    for layer, color in zip(layers, colors):
        steps, ratios, requested, absolute = [], [], [], []
        for record in history:
            raw = record["layer_raw_bytes"].get(layer, 0)
            stored = record["layer_compressed_bytes"].get(layer, 0)
            if raw and stored:
                steps.append(record["step"])
                ratios.append(raw / stored)
                requested.append(record["requested_bounds"].get(layer, math.nan))
                absolute.append(record["error_bounds"].get(layer, math.nan))
        label = layer if len(layers) <= max_legend else None
        ratio_axes.plot(steps, ratios, color=color, linewidth=0.8, label=label)
        requested_axes.plot(steps, requested, color=color, linewidth=0.8)
        absolute_axes.plot(steps, absolute, color=color, linewidth=0.8)
    peak_steps = [r["step"] for r in history if r["peak_compressed_bytes"] > 0]
    peak_ratios = [r["peak_raw_bytes"] / r["peak_compressed_bytes"] for r in history if r["peak_compressed_bytes"] > 0]
    ratio_axes.plot(peak_steps, peak_ratios, color="black", linewidth=2.2, label="peak held (all layers)")
    ratio_axes.set_ylabel("compression ratio")
    ratio_axes.set_yscale("log")
    ratio_axes.grid(True, which="both", alpha=0.3)
    ratio_axes.legend(fontsize="x-small", ncol=2 if len(layers) > 6 else 1, loc="upper left")
    if len(layers) > max_legend:
        ratio_axes.text(0.99, 0.02, f"{len(layers)} layers", transform=ratio_axes.transAxes, ha="right", va="bottom", fontsize="small")
    requested_axes.set_ylabel("requested bound")
    requested_axes.set_yscale("log")
    requested_axes.grid(True, which="both", alpha=0.3)
    absolute_axes.set_ylabel("absolute bound")
    absolute_axes.set_yscale("log")
    absolute_axes.grid(True, which="both", alpha=0.3)
    absolute_axes.set_xlabel("step")
    if title:
        figure.suptitle(title)
    figure.savefig(os.fspath(path), dpi=110)


def _colors(count: int) -> List[Any]:
    from matplotlib import colormaps

    colormap = colormaps["viridis"]
    if count <= 1:
        return [colormap(0.4)] * count
    return [colormap(index / (count - 1) * 0.9) for index in range(count)]
