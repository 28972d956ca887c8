"""Configs are frozen dataclasses with a docstring under each field (as saev writes them).

The docstrings are the help of the command-line flags made from the fields
(`clipatlas.cli.flags`), so a setting is documented once, where it is defined.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from collections.abc import Mapping
from typing import Any, TypeVar

from clipatlas.errors import UserError

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring written under it}, base classes first, subclasses overriding."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (frozen app, REPL): flags go without help
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def build(cls: type[T], settings: Mapping[str, Any], what: str) -> T:
    """`cls(**settings)`, refusing keys `cls` does not have with one line that lists the ones it has."""
    known = [f.name for f in init_fields(cls)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise UserError(f"unknown {what} setting(s) {', '.join(unknown)}; {what} takes: {', '.join(known)}")
    return cls(**settings)
