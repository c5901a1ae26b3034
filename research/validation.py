"""The argument checks of `research`: configs, tasks, probes and sweeps use these.

Every check raises `ValueError("<name> must be <requirement>, got <value>")`, where `name` is
what the caller calls the value (`"train.steps"`, `"ModelConfig.d_model"`, `"seq_len"`), so a
message always names the field and the value that was refused. `check_index` (a position in a
sequence) raises TypeError and IndexError instead, as sequence indexing does.

    check_int("train.steps", steps, 1)                 # an int >= 1 (bool refused)
    check_number("optimizer.lr", lr, 0.0, exclusive_minimum=True)
    check_choice("data.source", source, ("task", "text"))
    check_bool("train.progress", progress)
    i = check_index(i, len(self), "windows")           # 0 <= i < len (negative from the end)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _none_ok(optional: bool) -> str:
    return " or None" if optional else ""


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              optional: bool = False) -> None:
    """Raise ValueError unless `value` is an integer in [minimum, maximum] (None: unbounded).

    With `optional=True`, None is accepted too.
    """
    if optional and value is None:
        return
    if not is_int(value):
        raise ValueError(f"{name} must be an integer{_none_ok(optional)}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")


def check_number(name: str, value: Any, minimum: float | None = None,
                 maximum: float | None = None, *, exclusive_minimum: bool = False,
                 exclusive_maximum: bool = False, optional: bool = False) -> None:
    """Raise ValueError unless `value` is a real number (int or float, not bool) in the range
    [minimum, maximum] (`exclusive_minimum=True`: (minimum, ...; `exclusive_maximum=True`:
    ..., maximum)). NaN is refused."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a number{_none_ok(optional)}, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive_minimum else '>='} {minimum}, "
                         f"got {value!r}")
    if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
        raise ValueError(f"{name} must be {'<' if exclusive_maximum else '<='} {maximum}, "
                         f"got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any], *, optional: bool = False) -> None:
    """Raise ValueError unless `value` is one of `choices` (or None, with `optional=True`)."""
    if optional and value is None:
        return
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}{_none_ok(optional)}, "
                         f"got {value!r}")


def check_bool(name: str, value: Any, *, optional: bool = False) -> None:
    """Raise ValueError unless `value` is True or False (or None, with `optional=True`)."""
    if optional and value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false{_none_ok(optional)}, got {value!r}")


def check_index(index: Any, length: int, what: str = "items") -> int:
    """The position `index` (an integer; negative counts from the end) of a sequence of `length`
    `what`, as an int in [0, length). A non-integer raises TypeError and an index out of range
    IndexError (as sequence indexing does; not ValueError)."""
    if not is_int(index):
        raise TypeError(f"index must be an integer, got {type(index).__name__}")
    index = int(index)
    position = index + length if index < 0 else index
    if not 0 <= position < length:
        raise IndexError(f"index {index} out of range for {length} {what}")
    return position
