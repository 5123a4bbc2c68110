"""How an error message names a setting: by its command-line flag under ``train.py``, by the argument's
name from Python, so that each reader gets advice they can act on; and which settings a class takes."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
from collections.abc import Iterator

_ON_THE_COMMAND_LINE = contextvars.ContextVar("on_the_command_line", default=False)
# `--group.name` or `--group.name VALUE` in backticks, as the library writes its advice.
_FLAG = re.compile(r"`--(model|data|fid|sample_grid|checkpoint|trainer)\.(\w+(?:\.\w+)*)(?: ([^`]+))?`")
_CLASSES = {"trainer": "Trainer", "checkpoint": "GANCheckpoint"}


@contextlib.contextmanager
def on_the_command_line() -> Iterator[None]:
    """Within it, messages keep their ``--group.name`` flags (``train.py`` runs inside it)."""
    token = _ON_THE_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_THE_COMMAND_LINE.reset(token)


class SettingError(ValueError):
    """A setting, or the files it points to, that cannot work. The message (through :func:`advice`) names the
    problem and the fix; ``train.py`` prints it as one line, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(advice(message))


def advice(message: str) -> str:
    """``message`` for its reader: as written on the command line; from Python, each `--model.n_critic 1`
    becomes `n_critic=1` (`Trainer(max_steps=...)` for a trainer flag)."""
    return message if _ON_THE_COMMAND_LINE.get() else _FLAG.sub(_as_argument, message)


def _as_argument(match: re.Match) -> str:
    group, name, value = match.groups()
    if value is not None:
        literals = {"true": "True", "false": "False", "null": "None"}
        value = literals.get(value, value if re.fullmatch(r"[-+.\deE]+|[A-Z_]+|\.\.\.", value) else repr(value))
    argument = name if value is None else f"{name}={value}"
    return f"`{_CLASSES[group]}({argument})`" if group in _CLASSES else f"`{argument}`"


def init_arguments(cls: type) -> list[str]:
    """The named ``__init__`` arguments of ``cls`` and of its bases, which a subclass takes as ``**kwargs``."""
    parameters = (p for klass in cls.__mro__ for p in inspect.signature(klass.__init__).parameters.values())
    return list(dict.fromkeys(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                              and p.name != "self"))
