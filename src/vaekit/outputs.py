"""Named outputs: tuples whose elements also have names, as every vaekit module returns them.

A model's ``forward`` returns a :class:`NamedOutput`, so it unpacks like the seed's list
(``recons, input, mu, log_var = model(x)``, ``model.loss_function(*model(x))``) and its parts
are also reachable by name (``out.mu``). Unlike a ``typing.NamedTuple`` it can be rebuilt from
one iterable, ``type(out)(iterable)``, which is what ``torch.nn.parallel.gather`` (DataParallel)
does with a model's outputs, and it survives ``copy.deepcopy`` and ``pickle``.

A subclass declares its tuple fields as annotations, in order; ``_extras`` names attributes that
ride along outside the tuple (used by the quantizer, whose output must unpack into the seed's
two values) — they default to None and are lost by ``type(out)(iterable)``, so models keep
everything a caller needs in the tuple.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from operator import itemgetter
from typing import Any, ClassVar

from torch import Tensor


class NamedOutput(tuple):
    """A tuple with named fields (class annotations) and optional extra attributes (``_extras``)."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _extras: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name in inspect.get_annotations(cls) if not name.startswith("_")]
        cls._fields = (*cls._fields, *own)
        for index, name in enumerate(cls._fields):
            setattr(cls, name, property(itemgetter(index), doc=f"Element {index} of the tuple."))

    def __new__(cls, *args: Any, **kwargs: Any) -> NamedOutput:
        """``cls(field0, field1, …, extra0=…)``, fields by position or name, or ``cls(iterable)``."""
        names = (*cls._fields, *cls._extras)
        if len(args) == 1 and not kwargs and len(cls._fields) > 1 and _is_iterable(args[0]):
            args = tuple(args[0])  # type(out)(iterable): what nn.parallel.gather does
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} values ({', '.join(names)})")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{cls.__name__} got an unexpected or repeated field {name!r}")
            values[name] = value
        missing = [name for name in cls._fields if name not in values]
        if missing:
            raise TypeError(f"{cls.__name__} is missing {', '.join(missing)}")
        self = super().__new__(cls, [values[name] for name in cls._fields])
        for name in cls._extras:
            setattr(self, name, values.get(name))
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:
        """The fields, so that pickle and deepcopy rebuild the tuple (extras travel in ``__dict__``)."""
        return tuple(self)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> NamedOutput:
        """Build from an iterable of the fields (the ``namedtuple`` spelling)."""
        return cls(*iterable)

    def _asdict(self) -> dict[str, Any]:
        """The fields (not the extras) as a dict."""
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        def show(value: Any) -> str:
            return f"Tensor{list(value.shape)}" if isinstance(value, Tensor) else repr(value)

        parts = [f"{name}={show(value)}" for name, value in zip(self._fields, self, strict=True)]
        return f"{type(self).__name__}({', '.join(parts)})"


def _is_iterable(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (Tensor, str, bytes))
