"""A name -> object registry (timm-style), shared by every "chosen by name" part.

Example:
    >>> SCHEDULES = Registry("schedule", key="schedule")
    >>> @SCHEDULES.register("linear")
    ... def linear(progress): return progress
    >>> SCHEDULES.get("linear")(0.5), SCHEDULES.names()
    (0.5, ['linear'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered under unique names.

    Args:
        kind: what is registered, for messages (``"rho schedule"``).
        key: the config key or argument that names an entry, for the unknown-name error
            (``"rho_schedule"`` gives ``rho_schedule='x' is not a registered rho schedule; ...``).
    """

    def __init__(self, kind: str, *, key: str) -> None:
        self.kind, self.key = kind, key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; a second registration is an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a ValueError lists the accepted names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"{self.key}={name!r} is not a registered {self.kind}; expected one of {self.names()}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
