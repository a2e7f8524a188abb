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

A field whose type is itself a config dataclass (``meta: MetaConfig``) is a *section*: its fields
become options in a group titled by the section's ``help``, named with the section's ``prefix``
(``--meta-inner-lr``; a field already starting with the prefix keeps its name, ``meta_lr``), and
``flatten``/``unflatten`` give the flat form, one key per option, stored in JSON files.
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
           flags: tuple[str, ...] | None = None, default_factory=dataclasses.MISSING) -> dataclasses.Field:
    """A dataclass field with ``default`` (or ``default_factory``, called for each instance and for the
    option's default) whose ``metadata`` documents its command-line option."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if flags is not None:
        metadata["flags"] = tuple(flags)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def section(cls: type, prefix: str, help: str) -> dataclasses.Field:
    """A field holding config dataclass ``cls`` (default: its defaults) whose options are named with
    ``prefix`` and grouped under the title ``help``."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "prefix": prefix})


def is_section(field: dataclasses.Field) -> bool:
    return "prefix" in field.metadata


def flat_name(field: dataclasses.Field, inner: str) -> str:
    """The flat name (option dest, JSON key) of field ``inner`` of section ``field``."""
    prefix = field.metadata["prefix"]
    return inner if inner.startswith(prefix) else prefix + inner


def flatten(config) -> dict:
    """A config dataclass as one flat dict in field order, sections expanded in place."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if is_section(field):
            out.update({flat_name(field, k): v for k, v in dataclasses.asdict(value).items()})
        else:
            out[field.name] = value
    return out


def flat_types(cls: type) -> dict[str, object]:
    """Flat name -> type (``| None`` removed) of every option of config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        if is_section(field):
            out.update({flat_name(field, k): v for k, v in flat_types(hints[field.name]).items()})
        else:
            out[field.name] = _base_type(hints[field.name])[0]
    return out


def unflatten(cls: type, data: dict) -> dict:
    """``flatten``'s inverse: keyword arguments for ``cls`` (a section built from the keys it finds;
    a key that is no option of ``cls`` is an error naming it)."""
    data = dict(data)
    kwargs = {}
    known = []
    for field in dataclasses.fields(cls):
        if is_section(field):
            inner_cls = typing.get_type_hints(cls)[field.name]
            names = {flat_name(field, f.name): f.name for f in dataclasses.fields(inner_cls)}
            known += names
            given = {inner: data.pop(flat) for flat, inner in names.items() if flat in data}
            if given:
                kwargs[field.name] = inner_cls(**given)
        else:
            known.append(field.name)
            if field.name in data:
                kwargs[field.name] = data.pop(field.name)
    if data:
        raise ValueError(f"unknown option(s) {', '.join(sorted(data))}; known: {', '.join(sorted(known))}")
    return kwargs


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
        if is_section(field):
            _add_section(parser, field, hints[field.name])
            continue
        _add_one(target, cls.__name__, field, hints[field.name], field.name)


def _add_section(parser: argparse.ArgumentParser, field: dataclasses.Field, cls: type) -> None:
    group = parser.add_argument_group(field.metadata["help"])
    hints = typing.get_type_hints(cls)
    for inner in dataclasses.fields(cls):
        _add_one(group, cls.__name__, inner, hints[inner.name], flat_name(field, inner.name))


def _add_one(target, owner: str, field: dataclasses.Field, annotation, dest: str) -> None:
    """One option ``--dest`` (dashes for underscores) for ``field`` of config ``owner``."""
    meta = field.metadata
    flags = tuple(meta.get("flags", ("--" + dest.replace("_", "-"),)))
    kind, _ = _base_type(annotation)
    kwargs: dict = {"dest": dest, "default": _default(field), "help": meta.get("help")}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind in SCALARS:
        kwargs["type"] = kind
    elif typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
        kwargs["type"] = comma_list
    else:
        raise TypeError(f"{owner}.{field.name}: unsupported option type {annotation!r}")
    if "choices" in meta:
        kwargs["choices"] = tuple(meta["choices"])
    target.add_argument(*flags, **kwargs)


def from_args(cls: type, args: argparse.Namespace, only: Collection[str] | None = None,
              exclude: Collection[str] = ()) -> dict:
    """The values of ``cls``'s fields (those of ``only``, less ``exclude``) in parsed ``args``, as
    keyword arguments for ``cls``; a field with no option in ``args`` is left out (its default applies),
    a section is built from the options of it that ``args`` holds."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in selected_fields(cls, only, exclude):
        if is_section(field):
            inner = {f.name: getattr(args, flat_name(field, f.name)) for f in dataclasses.fields(hints[field.name])
                     if hasattr(args, flat_name(field, f.name))}
            if inner:
                out[field.name] = hints[field.name](**inner)
        elif hasattr(args, field.name):
            out[field.name] = getattr(args, field.name)
    return out
