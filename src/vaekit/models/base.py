"""The contract every vaekit model implements, and the helpers that make it cheap to implement.

:class:`Model` is what the trainer, the evaluator, the pictures and the command line rely on —
they never ask which family a model belongs to:

* ``forward(input)`` returns one :class:`~vaekit.outputs.NamedOutput`, which unpacks like
  PyTorch-VAE's list, so ``model.loss_function(*model(x))`` works;
* ``loss_function(*outputs, beta=1.0)`` returns a dict of 0-dim tensors: ``"loss"`` (what the
  optimizer minimises, in nats per example) and every statistic worth logging;
* ``can_sample`` / ``sample(num_samples, current_device, generator=None)``; without a prior,
  ``sample`` raises :class:`~vaekit.errors.NoPriorError`;
* ``save_pretrained(dir)`` / ``cls.from_pretrained(dir)``: the constructor's arguments, captured
  once by :func:`capture_config`, are the saved config, and ``cls(**config)`` rebuilds the model.

:class:`AutoEncoder` adds what an image model with an encoder and a decoder offers: ``encode``,
``decode``, ``latent`` / ``decode_latent`` (the space interpolation happens in),
``encode_latents`` (what ``vaekit encode`` writes), ``reconstruct``, ``generate``, the decoder
``likelihood`` and ``input_shape``.

The method names are PyTorch-VAE's, and its calls are accepted as it makes them: ``name`` and
``img_size`` constructor keys, ``M_N``/``optimizer_idx``/``batch_idx`` in ``loss_function``,
``labels=`` in ``forward``/``sample``/``generate``. Any other unknown keyword is accepted with an
:class:`~vaekit.errors.IgnoredArgumentWarning` that names it (PyTorch-VAE ignores them silently,
which hides typos); the YAML config stays strict.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vaekit import checkpoint
from vaekit.compiling import compile_for_scoring
from vaekit.errors import IgnoredArgumentWarning, NoPriorError, VaekitError
from vaekit.outputs import NamedOutput

#: Keywords PyTorch-VAE's experiment passes to ``loss_function`` besides ``M_N``: accepted, unused.
PYTORCH_VAE_LOSS_KEYWORDS = frozenset({"optimizer_idx", "batch_idx"})
#: Passed by PyTorch-VAE to ``forward``, ``sample`` and ``generate``; unconditional models ignore it.
LABELS = frozenset({"labels"})

ModelT = TypeVar("ModelT", bound="Model")


def warn_ignored(
    owner: object, method: str, kwargs: Mapping[str, Any], silently: Collection[str] = ()
) -> None:
    """Warn (:class:`IgnoredArgumentWarning`) about the keywords of ``kwargs`` not in ``silently``."""
    unknown = sorted(set(kwargs) - set(silently))
    if unknown:
        warnings.warn(
            f"{type(owner).__name__}.{method} ignores the keyword argument(s) {', '.join(unknown)}: "
            "vaekit does not use them (a typo?)",
            IgnoredArgumentWarning,
            stacklevel=3,
        )


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: the JSON form of a constructor argument."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def capture_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a model's ``__init__`` so that its arguments, defaults filled in, become ``self.config``.

    The signature is the schema: nothing is typed twice, and ``cls(**model.config)`` rebuilds the
    model (diffusers' ``register_to_config`` in spirit). Called as PyTorch-VAE's ``run.py`` calls
    its models, ``name`` is ignored, ``img_size`` means ``image_size`` and any other unknown keyword
    is dropped with an :class:`IgnoredArgumentWarning` naming it.
    """
    signature = inspect.signature(init)
    names = list(signature.parameters)[1:]  # without self

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        if "img_size" in kwargs and "image_size" in names and "image_size" not in kwargs:
            kwargs["image_size"] = kwargs.pop("img_size")  # PyTorch-VAE's name for it
        ignored = {key: kwargs.pop(key) for key in list(kwargs) if key not in names}
        warn_ignored(self, "__init__", ignored, silently={"name"})
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.config = {key: _plain(value) for key, value in list(bound.arguments.items())[1:]}

    return wrapper


def image_shape(in_channels: int, image_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` from a channel count and an int or (H, W) image size."""
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = (int(s) for s in image_size)
    if in_channels < 1 or height < 1 or width < 1:
        raise ValueError(f"need positive channels and size, got {in_channels} channels, {image_size}")
    return (in_channels, height, width)


def check_input(model: nn.Module, x: Tensor, expected: tuple[int, ...]) -> None:
    """Raise a ``ValueError`` naming the expected and the given shape unless x is ``[B, *expected]``."""
    name = type(model).__name__
    want = "[B, " + ", ".join(str(s) for s in expected) + "]"
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} expects a tensor of shape {want}, got {type(x).__name__}")
    if x.dim() != len(expected) + 1:
        raise ValueError(f"{name} expects a {len(expected) + 1}-d input {want}, got shape {list(x.shape)}")
    if len(expected) == 3 and x.shape[1] != expected[0]:
        raise ValueError(
            f"{name} expects {expected[0]} input channels {want}, got {x.shape[1]} (shape {list(x.shape)})"
        )
    if tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{name} was built for inputs {want}, got shape {list(x.shape)}; build the model with the "
            "image size and channels of your data"
        )


class Model(nn.Module):
    """The contract of every vaekit model (see the module docstring)."""

    registry_name: ClassVar[str]  # its key in vaekit.models.MODELS, in config.yaml and config.json
    config: dict[str, Any]  # the constructor's arguments (set by @capture_config)
    #: What :meth:`sample` says when the model has no prior: what is missing, what to do instead.
    no_prior_message: ClassVar[str] = "this model has no prior to sample from"
    #: What the data loader feeds it (:data:`vaekit.data.ranges.INPUT_KINDS`): images in a
    #: likelihood's range ("bernoulli", "gaussian") or "codes" (int64 maps of code indices).
    input_kind: str

    @property
    def num_classes(self) -> int:
        """The number of labels ``sample(labels=…)`` and ``forward(labels=…)`` condition on; 0 when
        the model is unconditional (it then ignores labels)."""
        return 0

    def forward(self, input: Tensor, **kwargs: Any) -> NamedOutput:
        raise NotImplementedError

    def loss_function(self, *outputs: Tensor, beta: float = 1.0, **kwargs: Any) -> dict[str, Tensor]:
        """The objective and the logged statistics from ``forward``'s outputs (all 0-dim tensors).

        ``beta`` weighs the KL term (β-VAE, KL warm-up); a model without one ignores it.
        """
        raise NotImplementedError

    @property
    def can_sample(self) -> bool:
        """Whether :meth:`sample` can draw from a prior."""
        return False

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
        """Draw ``num_samples`` examples from the model (``generator``: a CPU generator); ``labels``
        (an int or ``[n]``) for a class-conditional model, ``temperature`` scales the prior's spread.
        Without a prior, raise :class:`~vaekit.errors.NoPriorError` with :attr:`no_prior_message`."""
        raise NoPriorError(self.no_prior_message)

    # -- saving and loading ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` (registry name and constructor arguments) and ``model.safetensors``."""
        header = {"name": self.registry_name, "config": self.config}
        checkpoint.save_model_files(directory, header, self.state_dict())

    @classmethod
    def from_pretrained(cls: type[ModelT], directory: str | os.PathLike, map_location: Any = "cpu") -> ModelT:
        """Rebuild the model as ``cls(**config)`` and load its weights strictly; unpickles nothing.

        Also reads the ``config.json`` of vaekit 0.1, which named the class instead of the registry key.
        """
        header = checkpoint.load_model_header(directory)
        if header.get("name", header.get("class")) not in (cls.registry_name, cls.__name__):
            found = header.get("name", header.get("class"))
            raise VaekitError(f"{directory} holds a {found} model, not a {cls.registry_name}")
        model = cls(**header["config"])
        checkpoint.load_weights_into(model, directory, map_location)
        return model.to(map_location)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class AutoEncoder(Model):
    """A model of images with an encoder and a decoder: the part of the contract the pictures,
    ``vaekit encode`` and the reconstruction metrics use."""

    input_shape: tuple[int, ...]  # (C, H, W) of one input
    likelihood: nn.Module  # a DecoderLikelihood: .kind, .log_prob(x, recons), .mean(recons)
    #: Said beside the numbers of :meth:`log_px` when they are not an importance-sampled estimate.
    log_px_note: ClassVar[str | None] = None

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        """Images in the range of the decoder's likelihood."""
        return self.likelihood.kind

    #: "gaussian" (μ and log σ² per example) or "discrete" (a map of code indices): which latent
    #: statistics apply (:mod:`vaekit.evaluate`).
    latent_type: ClassVar[str]
    #: True when :meth:`log_px` estimates log p(x) (and :meth:`elbo` bounds it).
    estimates_log_px: ClassVar[bool] = False

    def encode(self, input: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def latent(self, x: Tensor) -> Tensor:
        """The deterministic latent of x, where interpolation happens: ``encode(x)[0]``."""
        return self.encode(x)[0]

    def decode_latent(self, z: Tensor) -> Tensor:
        """Images (the decoder's mean) from points of :meth:`latent`'s space."""
        return self.likelihood.mean(self.decode(z))

    def encode_latents(self, x: Tensor) -> dict[str, Tensor]:
        """The latents ``vaekit encode`` writes, by name."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        """The deterministic reconstruction of x, as an image."""
        return self.decode_latent(self.latent(x))

    def generate(self, x: Tensor, **kwargs: Any) -> Tensor:
        """PyTorch-VAE's reconstruction: ``forward``'s decoder output, as an image."""
        warn_ignored(self, "generate", kwargs, silently=LABELS)
        return self.likelihood.mean(self.forward(x)[0])

    def extra_pictures(self, num: int) -> dict[str, Tensor]:
        """Pictures of the model itself beside samples and reconstructions, e.g. a VampPrior's
        pseudo-inputs: ``{name: [N, C, H, W]}`` in the data's range. None by default."""
        return {}

    def compile_scoring(self) -> None:
        """``torch.compile`` the part of :meth:`log_px` that runs once per importance sample, in place
        (``vaekit evaluate --compile`` does it on an inference copy). By default the decoder; a model
        whose per-sample work is more (a likelihood too) compiles that instead. Shapes are static:
        one compiled graph per chunk size."""
        self.decode = compile_for_scoring(self.decode, self._device())  # type: ignore[method-assign]

    def log_px(
        self,
        x: Tensor,
        num_samples: int = 1000,
        chunk_size: int = 500,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """An estimate of log p(x) per example and its standard error (if :attr:`estimates_log_px`);
        its random draws from ``generator`` if given (a generator on the model's device)."""
        raise NotImplementedError(f"{type(self).__name__} does not estimate log p(x)")

    def elbo(
        self, x: Tensor, num_samples: int = 1, beta: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """The evidence lower bound per example, in nats (if :attr:`estimates_log_px`); its random
        draws from ``generator`` if given."""
        raise NotImplementedError(f"{type(self).__name__} has no ELBO")
