"""`@records_init_kwargs`: a module remembers the arguments it was built with, so saving cannot drift
from construction (as the persistence decorator of NVIDIA's code records `init_kwargs`)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def records_init_kwargs(cls: T) -> T:
    """Wrap `cls.__init__` so that every instance holds `init_kwargs`: all constructor arguments by
    name, defaults filled in (a dict that rebuilds the module: `cls(**instance.init_kwargs)`)."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        recorded: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{cls.__name__}: *{name} cannot be recorded as keyword arguments")
            recorded.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
        self.init_kwargs = recorded

    cls.__init__ = __init__
    return cls
