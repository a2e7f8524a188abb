"""Command-line options from a config dataclass, so that an option is spelled once: in its field.

``add_options(parser, TrainConfig)`` gives every field a flag ``--field-name`` whose type, default,
choices and help come from the field (transformers' ``HfArgumentParser`` idea, kept to the few
shapes our configs use); ``from_args`` reads the values back as keyword arguments of the
dataclass. A field's ``metadata`` (``option(...)`` writes it) may carry:

- ``help``: the option's help text (the one place the option is documented);
- ``choices``: the values it accepts;
- ``flags``: its flags where they differ from ``--field-name``, e.g. ``("--learning-rate", "--lr")``.

Types: ``int``, ``float``, ``str`` and ``X | None`` of those; ``bool`` becomes a
``--name/--no-name`` pair (``argparse.BooleanOptionalAction``); ``tuple[str, ...]`` is written as a
comma-separated list (``--text-columns a,b``). A field without a default has the default ``None``
(the dataclass's own check, or the command's, says it is missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection

SCALARS = (int, float, str)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``: a comma-separated list, blanks dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def option(default=dataclasses.MISSING, help: str | None = None, choices: Collection | None = None,
           flags: tuple[str, ...] | None = None) -> dataclasses.Field:
    """A dataclass field with ``default`` whose ``metadata`` documents its command-line option."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if flags is not None:
        metadata["flags"] = tuple(flags)
    return dataclasses.field(default=default, metadata=metadata)


def selected_fields(cls: type, only: Collection[str] | None = None,
                    exclude: Collection[str] = ()) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` named in ``only`` (all when ``None``) and not in ``exclude``,
    in declaration order; a name that is not a field is an error naming it."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(only or ()) - set(names)) + sorted(set(exclude) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; fields: {', '.join(names)}")
    return [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in exclude]


def _base_type(annotation) -> tuple[object, bool]:
    """(type without ``| None``, whether ``None`` was allowed)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported option type {annotation!r}: one type or one type | None")
        return args[0], True
    return annotation, False


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_options(parser: argparse.ArgumentParser, cls: type, only: Collection[str] | None = None,
                exclude: Collection[str] = (), title: str | None = None) -> None:
    """Add one option per field of dataclass ``cls`` (those of ``only``, less ``exclude``) to
    ``parser``, in an argument group named ``title`` when given. See the module docstring for the
    flags, types and metadata."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(title) if title else parser
    for field in selected_fields(cls, only, exclude):
        meta = field.metadata
        flags = tuple(meta.get("flags", ("--" + field.name.replace("_", "-"),)))
        kind, _ = _base_type(hints[field.name])
        kwargs: dict = {"dest": field.name, "default": _default(field), "help": meta.get("help")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in SCALARS:
            kwargs["type"] = kind
        elif typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
            kwargs["type"] = comma_list
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: unsupported option type {hints[field.name]!r}")
        if "choices" in meta:
            kwargs["choices"] = tuple(meta["choices"])
        target.add_argument(*flags, **kwargs)


def from_args(cls: type, args: argparse.Namespace, only: Collection[str] | None = None,
              exclude: Collection[str] = ()) -> dict:
    """The values of ``cls``'s fields (those of ``only``, less ``exclude``) in parsed ``args``, as
    keyword arguments for ``cls``; a field with no option in ``args`` is left out (its default applies)."""
    return {f.name: getattr(args, f.name) for f in selected_fields(cls, only, exclude) if hasattr(args, f.name)}
