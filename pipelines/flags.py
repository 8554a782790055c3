"""Yes/no options as they arrive from a MONAI bundle command line.

``python -m monai.bundle run ... --overwrite false`` passes the text ``"false"`` (Python Fire, which
MONAI's bundle CLI uses, reads only ``False`` as a boolean), and any non-empty text is true: a run told
not to overwrite would overwrite. The pipelines' functions read their yes/no options through
:func:`flag`, so the text is read as meant and anything else is refused by name.
"""

from __future__ import annotations

__all__ = ["flag"]


def flag(name: str, value: object) -> bool:
    """``value`` as a boolean: a bool, or the text ``true``/``false`` in any case.

    Raises:
        ValueError: anything else, naming the option ``name``.

    Example:
        >>> flag("overwrite", "false"), flag("tta", True)
        (False, True)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")
