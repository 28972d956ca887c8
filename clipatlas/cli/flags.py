"""Command-line flags made from config dataclasses, so a flag's type, help and default are the
field's own: `--batch-size` is `batch_size`, its help the docstring under the field, its default
the field's default (shown in --help, left out of the namespace so the config supplies it)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipatlas._config import default_of, field_docs, init_fields


def add_workspace(parser: argparse.ArgumentParser, help: str = "workspace directory") -> None:
    parser.add_argument("-w", "--workspace", required=True, type=Path, help=help)


def add_sae_name(parser: argparse.ArgumentParser, help: str = "SAE name (default: the workspace's only SAE)") -> None:
    parser.add_argument("--name", help=help)


def output_file(text: str) -> Path:
    """A flag's type for a file the command writes: its folder must exist (a typo in it is not a new folder)."""
    path = Path(text).expanduser()
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {path.parent} to write {path.name} in; create it first")
    return path


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown_default(value: Any) -> str:
    if value is None or value is dataclasses.MISSING:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, tuple):  # the command line writes tuples comma-separated
        return ",".join(map(str, value))
    return str(value)


def sentence(doc: str) -> str:
    """A field's docstring as flag help: no final full stop, lower-case unless it starts an acronym."""
    doc = doc.strip().rstrip(".")
    return doc[:1].lower() + doc[1:] if doc[1:2].islower() else doc


def _argument_type(annotation: Any) -> tuple[Any, list | None]:
    """(the converter for a flag's text, its choices) of a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _argument_type(inner[0]) if len(inner) == 1 else (str, None)
    if origin is typing.Literal:
        return str, list(typing.get_args(annotation))
    if annotation in (int, float, str, bool):
        return annotation, None
    return str, None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    annotation: Any,
    help_text: str,
    default: Any = None,
    aliases: Iterable[str] = (),
) -> None:
    """One flag for a config field, whose value is absent from the namespace unless given."""
    converter, choices = _argument_type(annotation)
    shown = shown_default(default)
    full_help = sentence(help_text or "") + (f" (default: {shown})" if shown else "")
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": full_help, "dest": name}
    if converter is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs.update(type=converter, choices=choices, metavar=None if choices else name.upper())
    parser.add_argument(*aliases, flag(name), **kwargs)


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    defaults: dict[str, str] | None = None,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """A flag per field of dataclass `cls` (all but `skip`, or `only` these); `defaults` replaces
    the shown default of fields whose default is worked out at run time (e.g. "from the store")."""
    docs, hints, skip = field_docs(cls), _hints(cls), set(skip)
    for field in init_fields(cls):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        default = (defaults or {}).get(field.name, default_of(field))
        names = (aliases or {}).get(field.name, [])
        add_field_flag(parser, field.name, hints[field.name], docs.get(field.name, ""), default, names)


def given(args: argparse.Namespace, cls: type, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of `cls` given on the command line (the others keep the config's defaults)."""
    return {f.name: getattr(args, f.name) for f in init_fields(cls) if f.name not in skip and hasattr(args, f.name)}


def add_edit_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """`--edit SPEC`, repeatable: SAE edits applied in the order given (`args.edit`)."""
    parser.add_argument("--edit", action="append", default=[], metavar="SPEC", help=help)


def add_decoder_settings_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE`, repeatable: decoder settings (`args.settings`)."""
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help=help)
