"""Shape changes for whole in-memory splits: channel count (gray <-> RGB) and image size.

Both take and return uint8 ``[N,C,H,W]`` and are applied once, when a split is loaded (the folder
source does the same per image with Pillow, see :mod:`vaekit.data.folder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaekit.errors import DataError


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` to ``channels`` (1 <-> 3): gray is repeated; RGB -> ITU-R 601 luma like PIL."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        return (
            ((images.to(torch.int32) * w).sum(1, keepdim=True) + 500)
            .div(1000, rounding_mode="floor")
            .to(torch.uint8)
        )
    raise DataError(f"cannot convert {c}-channel images to {channels} channels; use channels=1 or 3")


def resize(images: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` scaled (bilinear, antialiased) to cover ``size`` and centre-cropped to it."""
    n, c, h, w = images.shape
    th, tw = size
    if (h, w) == (th, tw):
        return images
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    top, left = (nh - th) // 2, (nw - tw) // 2
    out = torch.empty((n, c, th, tw), dtype=torch.uint8)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].float()  # [chunk,C,H,W]
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        out[s : s + chunk] = x[:, :, top : top + th, left : left + tw].round().clamp(0, 255).to(torch.uint8)
    return out
