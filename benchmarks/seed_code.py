"""The seed document's two classes, executed from the seed text itself, exactly as quoted.

``../shared/seed/000_e243fba086af4dcb.txt`` quotes PyTorch-VAE's ``VanillaVAE`` and
``VectorQuantizer`` in fenced ``python`` blocks. The benchmarks run those blocks unchanged; only the
names the quotes use without importing them are provided (``BaseVAE`` is PyTorch-VAE's abstract
``nn.Module`` base, whose methods the quote overrides). One character is changed: the notes typed
the commas of ``recons，input，mu，log_var = args[:4]`` full-width (U+FF0C), which Python cannot
parse; they are read as ASCII commas (``FULLWIDTH_FIXES``). Nothing else is touched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEED_DIRS = [
    Path(__file__).resolve().parents[1] / "shared" / "seed",
    Path(__file__).resolve().parents[2] / "shared" / "seed",
]


FULLWIDTH_FIXES = {"，": ","}  # only applied outside comments and strings, see seed_classes


def seed_text() -> str:
    """The seed document (the first ``*.txt`` in ``shared/seed`` beside or above the repository)."""
    for folder in SEED_DIRS:
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if files:
            return files[0].read_text(encoding="utf-8")
    raise FileNotFoundError(f"the seed document is not in any of {[str(d) for d in SEED_DIRS]}")


def seed_classes() -> dict[str, type]:
    """``{"VanillaVAE": cls, "VectorQuantizer": cls}`` built by executing the seed's code blocks."""
    namespace: dict[str, Any] = {
        "torch": torch,
        "nn": nn,
        "F": F,
        "Tensor": Tensor,
        "List": list,  # the quotes annotate with typing.List; only as an annotation
        "Any": Any,
        "BaseVAE": nn.Module,
    }
    blocks = re.findall(r"```python\n(.*?)```", seed_text(), flags=re.S)
    for block in blocks:
        exec(compile(_ascii_punctuation(block), "<seed>", "exec"), namespace)
    missing = [name for name in ("VanillaVAE", "VectorQuantizer") if name not in namespace]
    if missing:
        raise RuntimeError(f"the seed text no longer defines {missing}")
    return {"VanillaVAE": namespace["VanillaVAE"], "VectorQuantizer": namespace["VectorQuantizer"]}


def _ascii_punctuation(block: str) -> str:
    """Full-width commas in the code part of each line (before any ``#``) read as ASCII commas."""
    lines = []
    for line in block.splitlines():
        code, hash_, comment = line.partition("#")
        for wide, ascii_ in FULLWIDTH_FIXES.items():
            code = code.replace(wide, ascii_)
        lines.append(code + hash_ + comment)
    return "\n".join(lines) + "\n"
