"""How a package presents its public types: as its own, whichever of its
modules defines them.

``eventstore.EventStore.__module__`` is ``"eventstore"``, not
``"eventstore.store"``: reprs, tracebacks, documentation and pickles name
the import users write, and the modules behind the face can move without
breaking a pickle. The packages built on the store (``trading``,
``projections``) present theirs the same way.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping

__all__ = ["present_as_package"]


def present_as_package(package: str, namespace: Mapping[str, object]) -> None:
    """Give every class in ``namespace["__all__"]`` that one of
    ``package``'s modules defines ``package`` as its ``__module__``.

    Call it at the end of the package's ``__init__``. Annotations written as
    strings (``from __future__ import annotations``) are resolved first, in
    the defining module: msgspec and ``typing.get_type_hints`` look names up
    in the module a class names, which would no longer be the one that
    imported them.
    """
    exported = namespace["__all__"]
    if not isinstance(exported, list | tuple):
        raise TypeError(f"{package}.__all__ must be a list or a tuple of names")
    for name in exported:
        obj = namespace[name]
        if not isinstance(obj, type) or not obj.__module__.startswith(f"{package}."):
            continue
        own = inspect.get_annotations(obj)
        if own:
            hints = typing.get_type_hints(obj, include_extras=True)
            obj.__annotations__ = {field: hints[field] for field in own}
        obj.__module__ = package
