"""Tests for vaekit.report: grid arithmetic and placement, PNG files, curves, CSV, HTML."""

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import report
from vaekit.errors import VaekitError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "n,nrow,padding,h,w",
    [(16, 8, 2, 4, 5), (10, 4, 2, 3, 3), (3, 8, 2, 4, 4), (7, 7, 0, 2, 6), (1, 8, 1, 5, 5), (9, 3, 3, 2, 2)],
)
def test_make_grid_size(n, nrow, padding, h, w):
    grid = report.make_grid(torch.zeros(n, 1, h, w), nrow=nrow, padding=padding)
    cols, rows = min(nrow, n), -(-n // nrow)
    assert grid.shape == (rows * (h + padding) + padding, cols * (w + padding) + padding, 3)
    assert grid.dtype == np.uint8


def test_make_grid_places_white_image_in_its_cell():
    n, nrow, pad, h, w = 10, 4, 2, 3, 5
    images = torch.zeros(n, 1, h, w)
    images[6] = 1.0  # row 1, column 2
    grid = report.make_grid(images, nrow=nrow, padding=pad, pad_value=0.0)
    top, left = pad + 1 * (h + pad), pad + 2 * (w + pad)
    assert (grid[top : top + h, left : left + w] == 255).all()
    grid[top : top + h, left : left + w] = 0
    assert (grid == 0).all()  # nothing else is white: black images and black padding


def test_make_grid_padding_and_unfilled_cells_take_pad_value():
    grid = report.make_grid(torch.zeros(5, 3, 2, 2), nrow=3, padding=1, pad_value=1.0)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()  # border
    assert (grid[4:6, 7:9] == 255).all()  # the sixth cell (row 1, col 2) is empty
    assert (grid[1:3, 1:3] == 0).all()  # first image


def test_make_grid_grayscale_to_rgb_clip_and_rounding():
    images = torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]])  # [1, 1, 2, 2]
    grid = report.make_grid(images, padding=0)
    assert grid.shape == (2, 2, 3)
    expected = np.array([[128, 0], [255, 64]], dtype=np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(grid[..., c], expected)


def test_make_grid_keeps_colour_channels():
    images = torch.zeros(1, 3, 2, 2)
    images[0, 1] = 1.0  # pure green
    grid = report.make_grid(images, padding=0)
    assert (grid[..., 0] == 0).all() and (grid[..., 1] == 255).all() and (grid[..., 2] == 0).all()


def test_make_grid_rejects_bad_shapes():
    with pytest.raises(VaekitError):
        report.make_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(VaekitError):
        report.make_grid(torch.zeros(4, 4))


def test_save_grid_png_round_trip(tmp_path):
    images = torch.rand(6, 1, 7, 7)
    path = report.save_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), report.make_grid(images, nrow=3))


def test_save_reconstructions_alternates_columns(tmp_path):
    n, h, pad = 5, 3, 2
    originals, recons = torch.zeros(n, 1, h, h), torch.ones(n, 1, h, h)
    path = report.save_reconstructions(originals, recons, tmp_path / "rec.png", nrow=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * (h + pad) + pad, 4 * (h + pad) + pad, 3)  # 2 pairs per row, 3 rows
    for col in range(4):
        left = pad + col * (h + pad)
        cell = grid[pad : pad + h, left : left + h]
        assert (cell == (0 if col % 2 == 0 else 255)).all()
    with pytest.raises(VaekitError):
        report.save_reconstructions(originals, torch.ones(n, 1, h, h + 1), tmp_path / "bad.png")


def test_save_interpolation_one_row_per_path(tmp_path):
    r, s, h, pad = 3, 5, 4, 2
    rows = torch.linspace(0, 1, s).view(1, s, 1, 1, 1).expand(r, s, 1, h, h)
    grid = np.asarray(Image.open(report.save_interpolation(rows, tmp_path / "interp.png")))
    assert grid.shape == (r * (h + pad) + pad, s * (h + pad) + pad, 3)
    for i in range(r):
        top = pad + i * (h + pad)
        values = [grid[top, pad + j * (h + pad), 0] for j in range(s)]
        assert values == [round(255 * v) for v in np.linspace(0, 1, s)]


def _metric_rows():
    rows = []
    for step in range(1, 21):
        rows.append(
            {
                "step": step * 10,
                "epoch": (step - 1) // 5,
                "split": "train",
                "loss": 1000.0 / step**2,
                "Reconstruction_Loss": 900.0 / step**2,
                "KLD": 1.0 + 0.1 * step,
                "VQ_Loss": None if step % 3 else 0.5,
                "lr": 1e-3,
            }
        )
        if step % 5 == 0:
            rows.append(
                {
                    "step": step * 10,
                    "epoch": step // 5 - 1,
                    "split": "test",
                    "loss": 1100.0 / step**2,
                    "Reconstruction_Loss": "",
                    "KLD": "nan",
                    "VQ_Loss": "n/a",
                    "lr": "",
                }
            )
    return rows


def test_plot_curves_writes_png(tmp_path):
    path = report.plot_curves(_metric_rows(), tmp_path / "curves.png")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()


def test_plot_curves_without_numeric_columns_still_writes_png(tmp_path):
    path = report.plot_curves([{"step": 1, "split": "train", "note": "x"}], tmp_path / "empty.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_log_scale_rule():
    assert report._use_log_y([1000.0, 1.0])
    assert not report._use_log_y([50.0, 1.0])  # under two decades
    assert not report._use_log_y([1000.0, 0.0])  # not all positive


def test_read_metrics_csv_round_trip(tmp_path):
    rows = [
        {"step": 1, "epoch": 0, "split": "train", "loss": 0.5, "KLD": 1.25e-05},
        {"step": 2, "epoch": 0, "split": "test", "loss": 0.25, "KLD": None},
    ]
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert report.read_metrics_csv(path) == rows


def test_write_report_html_is_self_contained(tmp_path):
    images = {}
    for name in ("samples", "reconstructions <x&y>"):
        images[name] = report.save_grid(torch.rand(4, 1, 6, 6), tmp_path / f"{len(images)}.png", nrow=2)
    metrics = {
        "test": {"elbo": -93.123456789, "psnr": 21.5, "note": "<b>bold</b> & co"},
        "active_units": 12,
        "fid": torch.tensor(3.25),
    }
    config = "model:\n  name: vae<script>\n"
    path = report.write_report_html(tmp_path / "out" / "report.html", "Run <1>", metrics, images, config)
    text = path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == len(images)
    assert "http://" not in text and "https://" not in text
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', text))
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "test.elbo" in text and "-93.1235" in text and "21.5" in text and "3.25" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text and "<b>bold" not in text
    assert "reconstructions &lt;x&amp;y&gt;" in text and "<title>Run &lt;1&gt;</title>" in text
    assert "<pre>model:\n  name: vae&lt;script&gt;\n</pre>" in text


def test_write_report_html_rejects_missing_picture(tmp_path):
    with pytest.raises(VaekitError):
        report.write_report_html(tmp_path / "r.html", "t", {}, {"gone": tmp_path / "missing.png"})
