"""A gated PixelCNN prior over VQ-VAE code maps (van den Oord et al. 2016, arXiv:1606.05328).

The prior factorises a map of code indices c ∈ {0..K−1}^{h×w} in raster order,
``p(c) = Π_i p(c_i | c_<i)``, each factor a softmax over the K codes computed by a network that
sees only the codes before position i. Training minimises −log p(c) per map, in nats; sampling
draws the positions one after another, caching what earlier positions computed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit import losses
from vaekit.models.base import PYTORCH_VAE_LOSS_KEYWORDS, Model, capture_config, image_shape, warn_ignored
from vaekit.outputs import NamedOutput


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the sampler's h·w small steps on one CPU thread: each is far too small to split, and on a
    2-core machine two threads sampled 5× slower than one (29 against 141 maps/s, docs/results.md)."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class PriorOutput(NamedOutput):
    """What ``GatedPixelCNN.forward`` returns."""

    logits: Tensor  # [B, K, h, w]: the logits of p(c_i | c_<i) at every position i
    codes: Tensor  # [B, h, w] long: the input code map


def _gate(x: Tensor) -> Tensor:
    """The gated activation ``tanh(a) ⊙ σ(b)`` of the two channel halves: ``[B, 2C, …] -> [B, C, …]``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (the paper's figure 2), with r = kernel_size // 2.

    * vertical: a (r+1)×k conv over rows i−r..i and columns j−r..j+r of the vertical map (padded
      above and at the sides, never below), then the gate;
    * horizontal: a 1×(r+1) conv over columns j−r..j of the horizontal map (padded on the left),
      plus a 1×1 conv of the vertical pre-activation at the same position, then the gate, a 1×1
      conv and the residual connection ``h + …``;
    * with classes, a learned embedding of the label is added to both pre-activations (the paper's
      ``V_f h`` and ``V_g h``, eq. 4).

    Neither conv sees below (vertical) or to the right (horizontal) of its position, so the layer
    keeps whatever causality its inputs have; :class:`GatedPixelCNN` sets it up by shifting them.
    The two stacks' steps are separate methods so that the sampler can run them on the last r+1
    rows or columns alone.
    """

    def __init__(self, channels: int, kernel_size: int, num_classes: int) -> None:
        super().__init__()
        self.r = kernel_size // 2
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.r + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.r + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.condition = nn.Embedding(num_classes, 4 * channels) if num_classes else None

    def _condition(self, labels: Tensor | None) -> tuple[Tensor | float, Tensor | float]:
        """The label's terms for the vertical and the horizontal pre-activation, ``[B, 2C, 1, 1]`` each."""
        if self.condition is None or labels is None:
            return 0.0, 0.0
        cond_v, cond_h = self.condition(labels)[:, :, None, None].chunk(2, dim=1)
        return cond_v, cond_h

    def vertical_step(self, v: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``v: [B, C, h, w] ->`` (the next vertical map ``[B, C, h, w]``, the 1×1 conv of this one's
        pre-activation that joins the horizontal stack, ``[B, 2C, h, w]``)."""
        r = self.r
        v_pre = self.vertical(F.pad(v, (r, r, r, 0)))  # [B, 2C, h, w]; pad = (left, right, top, bottom)
        return _gate(v_pre + self._condition(labels)[0]), self.vertical_to_horizontal(v_pre)

    def horizontal_step(self, h: Tensor, link: Tensor, labels: Tensor | None) -> Tensor:
        """``h: [B, C, h, w]``, ``link: [B, 2C, h, w]`` from :meth:`vertical_step` ``->`` the next
        horizontal map ``[B, C, h, w]``."""
        h_pre = self.horizontal(F.pad(h, (self.r, 0, 0, 0))) + link + self._condition(labels)[1]
        return h + self.horizontal_out(_gate(h_pre))


class GatedPixelCNN(Model):
    """A gated PixelCNN over maps of code indices, optionally conditioned on a class label.

    Architecture (van den Oord et al. 2016, §2.1–2.3, fig. 2). The codes are embedded,
    ``[B, h, w] -> [B, C, h, w]``, and the embedding starts two stacks, shifted once:

    * the vertical stack starts from the embedding moved **down one row** (row 0 zero), so its
      feature at (i, j) sees rows < i only; each vertical conv looks at rows i−r..i of its input
      (r = kernel_size // 2), so every vertical feature, at every depth, depends on rows < i
      alone, over columns j − (l+1)r .. j + (l+1)r after l+1 layers — the full width above, not a
      cone;
    * the horizontal stack starts from the embedding moved **right one column** (column 0 zero),
      so its feature at (i, j) sees c_{i, <j}; each horizontal conv looks at columns j−r..j of its
      input, and each layer adds a 1×1 conv of the vertical pre-activation at the same (i, j),
      which depends on rows < i only.

    Hence the logits at (i, j), read from the horizontal stack through two 1×1 convs, depend on
    exactly the codes before (i, j) in raster order. There is **no blind spot**: the original
    PixelCNN's masked k×k convs stack into a receptive field that misses a growing wedge to the
    upper right; here the vertical stack covers the rectangle of rows i − 1 − L·r .. i − 1 and columns
    j − L·r .. j + L·r, and the horizontal one columns j − 1 − L·r .. j − 1 of row i (L layers), so a
    model with ``L·r ≥ max(h − 2, w − 1)`` sees every earlier position of an h×w map.

    Each layer is :class:`GatedLayer`: gates ``tanh(W_f∗x + V_f y) ⊙ σ(W_g∗x + V_g y)`` in both
    stacks, a residual connection in the horizontal one, and with ``num_classes > 0`` a learned
    embedding of the label y as the ``V y`` terms (eq. 4). ``num_classes = 0`` is unconditional.

    ``in_channels`` (must be 1) and ``image_size`` (the code map's (h, w)) come from the data.
    """

    registry_name = "pixelcnn_prior"
    #: What the data loader feeds it: maps of code indices, not images.
    input_kind: ClassVar[str] = "codes"

    @capture_config
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 7,
        num_embeddings: int = 512,
        hidden_channels: int = 64,
        num_layers: int = 12,
        kernel_size: int = 3,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if in_channels != 1:
            raise ValueError(
                f"GatedPixelCNN models one map of codes: in_channels must be 1, got {in_channels}"
            )
        _, height, width = image_shape(in_channels, image_size)
        for name, value, least in (
            ("num_embeddings", num_embeddings, 1),
            ("hidden_channels", hidden_channels, 1),
            ("num_layers", num_layers, 1),
            ("num_classes", num_classes, 0),
        ):
            if value < least:
                raise ValueError(f"GatedPixelCNN: {name} must be at least {least}, got {value}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"GatedPixelCNN: kernel_size must be odd and at least 3, got {kernel_size}")
        self.map_size = (height, width)
        self.num_embeddings, self.hidden_channels = num_embeddings, hidden_channels
        self._num_classes = num_classes
        self.embedding = nn.Embedding(num_embeddings, hidden_channels)
        self.layers = nn.ModuleList(
            GatedLayer(hidden_channels, kernel_size, num_classes) for _ in range(num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, num_embeddings, 1),
        )

    @property
    def num_classes(self) -> int:
        """The number of labels it conditions on; 0: unconditional (labels are ignored)."""
        return self._num_classes

    # -- the network -------------------------------------------------------------------------------
    def embed(self, codes: Tensor) -> Tensor:
        """The code embedding: ``[B, h, w]`` long ``-> [B, C, h, w]`` float."""
        return self.embedding(codes).permute(0, 3, 1, 2)  # [B, h, w, C] -> [B, C, h, w]

    def logits_from_embedding(self, embedded: Tensor, labels: Tensor | None = None) -> Tensor:
        """The logits of p(c_i | c_<i) at every position from the embedded codes:
        ``[B, C, h', w'] -> [B, K, h', w']`` (``labels``: ``[B]`` long, for a conditional prior).

        Any map size works: the network is convolutional and looks only up and left, so the logits
        of a map's first rows (or of a row's first columns) do not depend on the rest.
        """
        if embedded.dim() != 4 or embedded.shape[1] != self.hidden_channels:
            raise ValueError(
                f"GatedPixelCNN.logits_from_embedding expects [B, {self.hidden_channels}, h, w], got "
                f"shape {list(embedded.shape)}"
            )
        v = F.pad(embedded, (0, 0, 1, 0))[:, :, :-1]  # down one row: v[i] = embedded[i − 1]
        h = F.pad(embedded, (1, 0, 0, 0))[:, :, :, :-1]  # right one column: h[:, j] = embedded[:, j − 1]
        for layer in self.layers:
            v, link = layer.vertical_step(v, labels)
            h = layer.horizontal_step(h, link, labels)
        return self.head(h)  # [B, K, h', w']

    def forward(self, input: Tensor, labels: Tensor | None = None, **kwargs: Any) -> PriorOutput:
        """``[B, 1, h, w]`` or ``[B, h, w]`` long codes ``-> PriorOutput(logits [B, K, h, w], codes
        [B, h, w])``. A conditional prior needs ``labels`` (``[B]`` long); an unconditional one
        ignores them."""
        warn_ignored(self, "forward", kwargs)
        codes = self._check_codes(input)
        labels = self._check_labels(labels, codes.shape[0], codes.device)
        return PriorOutput(self.logits_from_embedding(self.embed(codes), labels), codes)

    def loss_function(self, *outputs: Tensor, beta: float = 1.0, **kwargs: Any) -> dict[str, Tensor]:
        """``'loss'``: −log p(c) per map in nats (summed over its h·w positions), averaged over the
        batch, computed in float32; ``'NLL'``: the same, detached; ``'bits_per_code'``: NLL / (h·w ln 2).

        ``beta`` is accepted for the contract and ignored: a prior has no KL term to weigh.
        """
        warn_ignored(self, "loss_function", kwargs, silently=PYTORCH_VAE_LOSS_KEYWORDS | {"M_N"})
        if len(outputs) < 2:
            raise ValueError(
                "GatedPixelCNN.loss_function needs forward's outputs: model.loss_function(*model(c))"
            )
        logits, codes = outputs[0], outputs[1]
        nll = -losses.categorical_log_likelihood(codes, logits.float()).mean()
        num_positions = math.prod(codes.shape[1:])
        return {
            "loss": nll,
            "NLL": nll.detach(),
            "bits_per_code": losses.bits_per_dim(nll.detach(), num_positions),
        }

    def log_prob(self, codes: Tensor, labels: Tensor | int | None = None) -> Tensor:
        """log p(c) of each code map in nats, ``[B, 1, h, w]`` or ``[B, h, w]`` ``-> [B]``."""
        logits, codes = self.forward(codes, labels=labels)
        return losses.categorical_log_likelihood(codes, logits.float())

    # -- sampling ----------------------------------------------------------------------------------
    @property
    def can_sample(self) -> bool:
        return True

    def sample(
        self,
        num_samples: int,
        current_device: Any = None,
        *,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> Tensor:
        """Draw ``num_samples`` code maps, ``-> [n, h, w]`` long on ``current_device`` (default: the
        model's), position by position in raster order from ``softmax(logits / temperature)``.

        ``labels`` (a conditional prior's; an unconditional one ignores them): an int (every sample
        that class), ``[n]`` long, or None for the classes in turn, 0, 1, …, 0, 1, … (so a grid of
        samples shows every class). ``temperature → 0`` approaches the argmax at every
        step. The draws are made on ``generator``'s device (a CPU generator: on the CPU), so a
        seeded generator repeats its samples. Cached: as each conv looks only r rows up or r columns
        left, every layer's vertical map is computed once per row and its horizontal one once per
        position, so all h·w steps together cost about one forward pass of the whole map.
        """
        warn_ignored(self, "sample", kwargs)
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        device = self._device()
        if labels is None and self.num_classes:
            labels = torch.arange(num_samples, device=device) % self.num_classes
        labels = self._check_labels(labels, num_samples, device)
        codes = torch.zeros(num_samples, *self.map_size, dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), _one_cpu_thread(device):
                self._sample_into(codes, labels, generator, temperature)
        finally:
            self.train(was_training)
        return codes if current_device is None else codes.to(current_device)

    def _sample_into(
        self, codes: Tensor, labels: Tensor | None, generator: torch.Generator | None, temperature: float
    ) -> None:
        """Fill ``codes [n, h, w]`` in raster order, each layer reading only the last r+1 rows
        (vertical) or columns (horizontal) of its input: what :meth:`logits_from_embedding` computes
        there, as the sampling test checks against it."""
        (n, height, width), r = codes.shape, self.layers[0].r
        blank = self.embedding.weight.new_zeros(n, self.hidden_channels, height, width)
        vertical = [blank.clone() for _ in self.layers]  # each layer's vertical input, row by row
        for i in range(height):
            if i > 0:  # the vertical stack's input is the embedding moved down a row: [n, w, C] -> [n, C, w]
                vertical[0][:, :, i] = self.embedding(codes[:, i - 1]).transpose(1, 2)
            links = []  # each layer's link to the horizontal stack on row i, [n, 2C, 1, w]
            for depth, layer in enumerate(self.layers):
                v, link = layer.vertical_step(vertical[depth][:, :, max(0, i - r) : i + 1], labels)
                links.append(link[:, :, -1:])
                if depth + 1 < len(self.layers):
                    vertical[depth + 1][:, :, i] = v[:, :, -1]
            horizontal = [blank[:, :, :1].clone() for _ in range(len(self.layers) + 1)]  # row i
            for j in range(width):
                if j > 0:  # the horizontal stack's input is the embedding moved right a column: [n, C]
                    horizontal[0][:, :, 0, j] = self.embedding(codes[:, i, j - 1])
                left = max(0, j - r)
                for depth, layer in enumerate(self.layers):
                    h = horizontal[depth][..., left : j + 1]  # [n, C, 1, ≤ r+1]
                    h = layer.horizontal_step(h, links[depth][..., left : j + 1], labels)
                    horizontal[depth + 1][..., j] = h[..., -1]
                logits = self.head(horizontal[-1][..., j : j + 1])[:, :, 0, 0]  # [n, K]
                probs = F.softmax(logits.float() / temperature, dim=1)
                if generator is not None:
                    probs = probs.to(generator.device)
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator)[:, 0].to(codes.device)

    # -- checks ------------------------------------------------------------------------------------
    def _check_codes(self, codes: Tensor) -> Tensor:
        """``[B, 1, h, w]`` or ``[B, h, w]`` integer codes in [0, K) ``-> [B, h, w]`` long, or ValueError."""
        height, width = self.map_size
        want = f"[B, 1, {height}, {width}] or [B, {height}, {width}]"
        if not isinstance(codes, Tensor):
            raise ValueError(
                f"GatedPixelCNN expects a tensor of code indices {want}, got {type(codes).__name__}"
            )
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"GatedPixelCNN expects integer code indices, got dtype {codes.dtype}")
        if codes.dim() == 4 and codes.shape[1] == 1:
            codes = codes[:, 0]  # [B, 1, h, w] -> [B, h, w]
        if codes.dim() != 3 or tuple(codes.shape[1:]) != self.map_size:
            raise ValueError(
                f"GatedPixelCNN was built for code maps {want}, got shape {list(codes.shape)}; build it "
                "with the image_size of your code maps"
            )
        if codes.numel() and bool(((codes < 0) | (codes >= self.num_embeddings)).any()):
            raise ValueError(
                f"GatedPixelCNN: codes must lie in [0, {self.num_embeddings}), got values from "
                f"{int(codes.min())} to {int(codes.max())}"
            )
        return codes.long()

    def _check_labels(self, labels: Tensor | int | None, batch: int, device: torch.device) -> Tensor | None:
        """The labels as ``[batch]`` long on ``device`` for a conditional prior (None for an
        unconditional one, which ignores them), or a ValueError."""
        if self.num_classes == 0:
            return None
        if labels is None:
            raise ValueError(
                f"this GatedPixelCNN is conditional (num_classes={self.num_classes}): pass labels"
            )
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((batch,), labels, dtype=torch.long, device=device)
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"GatedPixelCNN: labels must be an int or an integer tensor, got {labels!r}")
        if tuple(labels.shape) != (batch,):
            raise ValueError(f"GatedPixelCNN: expected labels of shape [{batch}], got {list(labels.shape)}")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"GatedPixelCNN: labels must lie in [0, {self.num_classes}), got values from "
                f"{int(labels.min())} to {int(labels.max())}"
            )
        return labels.to(device=device, dtype=torch.long)
