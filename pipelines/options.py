"""Command options declared once: each :class:`Option` names a config key (the pipeline function's argument
or :class:`~attnunet.pipelines.engines.config.TrainConfig` field), its type, default and help.

From one declaration come the command's argparse flags (:func:`add_options`), the overrides it passes to
the bundle config (:func:`config_overrides`) and the rows of README.md's option table
(:func:`readme_rows`); ``tests/test_option_declarations.py`` checks the bundle configs' keys and defaults
against them. This module imports nothing heavy: building a command's parser must not load torch or MONAI.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from attnunet.cli import key_values

__all__ = [
    "SAME",
    "Option",
    "add_options",
    "config_overrides",
    "declared_defaults",
    "field_options",
    "key_value_declaration",
    "option",
    "readme_rows",
]


class _Same:
    """The marker "as ``default``" (a class, so it reads well in reprs)."""

    def __repr__(self) -> str:
        return "SAME"


SAME: Any = _Same()


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a command.

    Attributes:
        key: the config key and argparse ``dest`` (the pipeline's argument of the same name).
        help: help text; ``%(default)s`` shows ``cli_default``.
        default: the value a config gets without the flag (``None``: the pipeline chooses).
        flag: ``"--roi-size"``; ``""`` derives it from ``key``; None makes the option positional.
        type, nargs, choices, metavar, required, action: as :meth:`argparse.ArgumentParser.add_argument`.
        parse: turns the parsed flag value into the config value (``KEY=VALUE`` lists into a dict).
        cli_default: argparse's default where it is not ``default`` itself (``[]`` for a repeated flag that
            ``parse`` turns into ``default``; None for a training option the plan fills).
        item: for a dict key set entry by entry: the entry's placeholder in README.md (``KEY``, ``NAME``).
        bundle: the template bundle's own value, where it is the demo's rather than ``default``.
    """

    key: str
    help: str
    default: Any = None
    flag: str | None = ""
    type: Callable[[str], Any] | None = None
    nargs: int | str | None = None
    choices: Sequence[Any] | None = None
    metavar: str | tuple[str, ...] | None = None
    required: bool = False
    action: str | type[argparse.Action] | None = None
    parse: Callable[[Any], Any] | None = None
    cli_default: Any = SAME
    item: str | None = None
    bundle: Any = SAME

    @property
    def option_string(self) -> str | None:
        """The flag as typed (``--roi-size``), None for a positional argument."""
        if self.flag is None:
            return None
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def parsed_default(self) -> Any:
        """What argparse gives without the flag."""
        return self.default if self.cli_default is SAME else self.cli_default

    @property
    def config_default(self) -> Any:
        """What the config key is set to without the flag: ``parse`` of the argparse default."""
        value = self.parsed_default
        return self.parse(value) if self.parse is not None else value

    def with_(self, **changes: Any) -> Option:
        """A copy with ``changes`` (e.g. ``cli_default=None`` for a planned training option)."""
        return dataclasses.replace(self, **changes)


def key_value_declaration(flag: str) -> dict[str, Any]:
    """The declaration of a repeated ``FLAG KEY=VALUE`` option gathered into one dict (VALUE read as JSON when
    it parses): pass it on as ``Option(key, help, {}, **key_value_declaration("--set"))``."""
    return {
        "flag": flag,
        "action": "append",
        "metavar": "KEY=VALUE",
        "cli_default": [],
        "parse": functools.partial(key_values, option=flag),
    }


def option(default: Any = dataclasses.MISSING, help: str = "", **declaration: Any) -> Any:
    """A dataclass field that is also a command option: ``lr: float = option(1e-3, "Adam rate", type=float)``.

    ``declaration`` holds :class:`Option`'s other attributes; the key is the field's name. A mutable
    ``default`` (dict, list) becomes the field's ``default_factory``.
    """
    metadata = {"option": {"help": help, **declaration}}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_options(cls: type) -> list[Option]:
    """The :class:`Option` of each field of dataclass ``cls`` declared with :func:`option`, in field order."""
    found = []
    for f in dataclasses.fields(cls):
        if "option" not in f.metadata:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None  # a required field: the command requires its flag
        found.append(Option(key=f.name, default=default, **f.metadata["option"]))
    return found


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add one argument per option to ``parser``: its dest is the option's key."""
    for opt in options:
        kwargs: dict[str, Any] = {"help": opt.help}
        for name in ("type", "nargs", "choices", "metavar", "action"):
            if getattr(opt, name) is not None:
                kwargs[name] = getattr(opt, name)
        if opt.option_string is None:
            parser.add_argument(opt.key, **kwargs)
            continue
        if opt.required:
            kwargs["required"] = True
        else:
            kwargs["default"] = opt.parsed_default
        parser.add_argument(opt.option_string, dest=opt.key, **kwargs)


def config_overrides(options: Iterable[Option], args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the parsed ``args`` set: each option's value, through its ``parse``."""
    overrides = {}
    for opt in options:
        value = getattr(args, opt.key)
        overrides[opt.key] = opt.parse(value) if opt.parse is not None else value
    return overrides


def readme_rows(command: str, config: str, options: Sequence[Option]) -> list[str]:
    """README.md's option table rows for ``command``: flag, config key and the help as ``--help`` shows
    it (``%(default)s`` filled in), one Markdown row per option."""
    parser = argparse.ArgumentParser(prog=f"attnunet {command}")
    add_options(parser, options)
    formatter = parser._get_formatter()
    actions = {action.dest: action for action in parser._actions}
    rows = []
    for opt in options:
        action = actions[opt.key]
        flag = " / ".join(action.option_strings) or opt.key.upper()
        key = f"{config}#{opt.key}" + (f"#{opt.item}" if opt.item else "")
        text = " ".join(formatter._expand_help(action).split()).replace("|", "\\|")
        rows.append(f"| `{command}` | `{flag}` | `{key}` | {text} |")
    return rows


def declared_defaults(options: Iterable[Option]) -> Mapping[str, Any]:
    """Config key -> the value a config holds for it without the flag (tests compare configs with it)."""
    return {opt.key: opt.config_default for opt in options}
