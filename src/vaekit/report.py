"""Pictures and the run report: image grids (PIL), loss curves (matplotlib, Agg) and one
self-contained HTML page with everything embedded.

Figures are drawn with :class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so
no GUI backend is touched and no global state is changed: PNGs are rendered by Agg.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from vaekit.errors import VaekitError

__all__ = [
    "make_grid",
    "plot_curves",
    "read_metrics_csv",
    "save_grid",
    "save_interpolation",
    "save_reconstructions",
    "write_report_html",
]

# --------------------------------------------------------------------------- image grids


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images ``[N, C, H, W]`` (C = 1 or 3, values in [0, 1], clipped) into one RGB picture.

    ``nrow`` images per grid row, ``ceil(N / nrow)`` rows; ``padding`` pixels of ``pad_value``
    around and between cells, so the result is ``uint8 [H', W', 3]`` with::

        H' = rows · (H + padding) + padding,   W' = min(nrow, N) · (W + padding) + padding

    Image ``i`` sits in row ``i // nrow``, column ``i % nrow``, its top-left pixel at
    ``(padding + row · (H + padding), padding + col · (W + padding))``. Unfilled cells of the last
    row keep ``pad_value``. Grayscale is replicated to RGB; NaN becomes 0.
    """
    x = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise VaekitError(f"expected images [N, C, H, W] with C in (1, 3) and N >= 1, got {tuple(x.shape)}")
    if nrow < 1 or padding < 0:
        raise VaekitError(f"need nrow >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0).expand(-1, 3, -1, -1)  # [N, 3, H, W]
    n, _, h, w = x.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    fill = float(np.clip(pad_value, 0.0, 1.0))
    grid = torch.full(
        (3, rows * (h + padding) + padding, cols * (w + padding) + padding), fill, dtype=torch.float64
    )
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    rgb = (grid * 255.0).round().to(torch.uint8)  # [3, H', W']
    return rgb.permute(1, 2, 0).contiguous().numpy()  # [H', W', 3]


def _save_png(array: np.ndarray, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def save_grid(images, path, nrow: int = 8) -> Path:
    """Write :func:`make_grid` of ``images [N, C, H, W]`` as a PNG; returns the path."""
    return _save_png(make_grid(images, nrow=nrow), path)


def save_reconstructions(originals, reconstructions, path, nrow: int = 8) -> Path:
    """Originals next to their reconstructions, in alternating COLUMNS.

    Each grid row holds ``nrow`` pairs: columns 1, 3, 5, … (counting from 1) are originals and the
    column right of each is its reconstruction, so a row reads ``x₀ x̂₀ x₁ x̂₁ …``.
    originals, reconstructions: ``[N, C, H, W]`` of one shape. Returns the path.
    """
    a, b = torch.as_tensor(originals).detach(), torch.as_tensor(reconstructions).detach()
    if a.shape != b.shape:
        raise VaekitError(f"originals {tuple(a.shape)} and reconstructions {tuple(b.shape)} differ in shape")
    pairs = torch.stack([a.cpu(), b.cpu()], dim=1).flatten(0, 1)  # [N, 2, C, H, W] → [2N, C, H, W]
    return _save_png(make_grid(pairs, nrow=2 * nrow), path)


def save_interpolation(rows, path) -> Path:
    """Interpolation paths ``[R, S, C, H, W]`` (R paths of S steps) → one grid row per path."""
    x = torch.as_tensor(rows).detach()
    if x.dim() != 5:
        raise VaekitError(f"expected interpolations [R, S, C, H, W], got {tuple(x.shape)}")
    return _save_png(make_grid(x.flatten(0, 1), nrow=x.shape[1]), path)


# --------------------------------------------------------------------------- metrics.csv and curves

_NON_LOSS_COLUMNS = {"step", "epoch", "split"}


def _parse_cell(text: str | None):
    """CSV text → int, float, None (empty) or the string itself."""
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_metrics_csv(path) -> list[dict]:
    """Read a metrics CSV (header row + one row per logging event) into dicts, converting each
    cell to ``int``, then ``float``, else keeping the string; empty cells become ``None``."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [{key: _parse_cell(value) for key, value in row.items()} for row in csv.DictReader(f)]


def _finite_float(value) -> float | None:
    """A finite float from a number or numeric string; None for anything else (bool included)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _x_value(row: Mapping, index: int) -> float:
    for key in ("step", "epoch"):
        v = _finite_float(row.get(key))
        if v is not None:
            return v
    return float(index)


def _series(rows: Sequence[Mapping], column: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{split: (xs, ys)}`` for the rows where ``column`` is a finite number."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(rows):
        y = _finite_float(row.get(column))
        if y is not None:
            xs, ys = out.setdefault(str(row.get("split") or "train"), ([], []))
            xs.append(_x_value(row, i))
            ys.append(y)
    return out


def _use_log_y(values: list[float]) -> bool:
    """Log scale when every value is positive and they span more than two decades."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100.0


def plot_curves(rows: Sequence[Mapping], path) -> Path:
    """One PNG with a subplot per numeric column of ``rows`` (all but step/epoch/split), a curve
    per split ('train' solid, 'test' and others dashed with markers); x is ``step`` where present,
    else ``epoch``, else the row index. Non-numeric, missing and non-finite cells are skipped.
    """
    columns = list(dict.fromkeys(k for row in rows for k in row if k not in _NON_LOSS_COLUMNS))
    curves = {c: s for c in columns if (s := _series(rows, c))}
    ncols = min(3, max(1, len(curves)))
    nrows = max(1, math.ceil(len(curves) / ncols))
    splits = sorted(
        {s for by_split in curves.values() for s in by_split},
        key=lambda s: ({"train": 0, "test": 1}.get(s, 2), s),
    )
    colour = {s: f"C{i}" for i, s in enumerate(splits)}  # one colour per split in every subplot
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (column, by_split) in zip(axes, curves.items(), strict=False):
        for split in (s for s in splits if s in by_split):
            xs, ys = by_split[split]
            style = (
                {"linestyle": "-"}
                if split == "train"
                else {"linestyle": "--", "marker": "o", "markersize": 3}
            )
            ax.plot(xs, ys, label=split, color=colour[split], **style)
        if _use_log_y([y for _, ys in by_split.values() for y in ys]):
            ax.set_yscale("log")
        ax.set_title(column)
        ax.set_xlabel("step" if any(_finite_float(r.get("step")) is not None for r in rows) else "epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(curves) :]:
        ax.set_axis_off()
    if not curves:
        axes[0].text(0.5, 0.5, "no numeric metrics", ha="center", va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------- HTML report


def _flatten(metrics: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict → ``[("a.b.c", value), …]`` in insertion order."""
    items: list[tuple[str, object]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, prefix=f"{name}."))
        else:
            items.append((name, value))
    return items


def _format_value(value) -> str:
    """Floats to 6 significant digits (``1.23457e-05``, ``123.457``); others via ``str``."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and np.size(value) == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.v{font-family:monospace;text-align:right}figure{margin:1.5em 0}
img{max-width:100%;image-rendering:pixelated}figcaption{color:#444}pre{background:#f5f5f5;padding:1em;overflow:auto}"""


def _data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise VaekitError(f"cannot embed {path}: only {sorted(_MIME)} pictures are supported")
    if not path.is_file():
        raise VaekitError(f"picture for the report not found: {path}")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def write_report_html(
    path, title: str, metrics: Mapping, images: Mapping[str, Path], config_yaml: str | None = None
) -> Path:
    """Write ONE self-contained HTML page: title, a metrics table (nested keys flattened to
    ``a.b.c``), every picture embedded as a base64 ``data:`` URI under its caption (the dict
    key), and the resolved config in a ``<pre>``. No scripts, no external resources; all text
    is escaped with :func:`html.escape`. Returns the path.
    """
    esc = html.escape
    rows = "\n".join(
        f'<tr><th>{esc(k)}</th><td class="v">{esc(_format_value(v))}</td></tr>' for k, v in _flatten(metrics)
    )
    figures = "\n".join(
        f'<figure><img src="{_data_uri(Path(p))}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for caption, p in images.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<h2>Metrics</h2>",
        f"<table>\n{rows}\n</table>" if rows else "<p>No metrics.</p>",
    ]
    if figures:
        parts += ["<h2>Pictures</h2>", figures]
    if config_yaml is not None:
        parts += ["<h2>Config</h2>", f"<pre>{esc(config_yaml)}</pre>"]
    parts.append("</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
