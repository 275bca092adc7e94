"""Results into proto messages: one mapping instead of a field-by-field copy in each servicer."""

from __future__ import annotations

from typing import Any, TypeVar

M = TypeVar("M")


def message_from(message_cls: type[M], source: Any, **converted: Any) -> M:
    """A `message_cls` message holding `source`'s attributes of the same names as its fields.

    `converted` gives the fields whose value is not the attribute as it is (a Path shown as a
    string, a nested message, a timestamp as text); they win over the attribute of that name.
    An attribute that is missing or None leaves its field unset.
    """
    values = {}
    for f in message_cls.DESCRIPTOR.fields:
        name = f.name
        if name not in converted:
            value = getattr(source, name, None)
            if value is not None:
                values[name] = value
    values.update(converted)
    return message_cls(**values)
