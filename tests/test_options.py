"""metabert.common.options: a config dataclass's fields as command-line options, and back."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from metabert.commands import common
from metabert.training.methods.options import MetaConfig
from metabert.common.options import add_options, comma_list, flatten, from_args, option, section, unflatten
from metabert.training.config import TrainConfig


@dataclass(frozen=True)
class Toy:
    name: str
    steps: int = 3
    rate: float = option(0.5, help="the rate", flags=("--rate", "-r"))
    limit: int | None = None
    kind: str = option("a", help="which kind", choices=("a", "b"))
    columns: tuple[str, ...] = ()
    fast: bool = False
    tags: list = field(default_factory=list)


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_options(p, Toy, exclude=("tags",), **kwargs)
    return p


def test_flags_types_and_defaults_come_from_the_fields():
    args = parser().parse_args([])
    assert from_args(Toy, args, exclude=("tags",)) == dict(name=None, steps=3, rate=0.5, limit=None, kind="a",
                                                           columns=(), fast=False)
    args = parser().parse_args(["--name", "x", "--steps", "4", "-r", "0.25", "--limit", "7", "--kind", "b",
                                "--columns", "q, p,", "--fast"])
    assert Toy(**from_args(Toy, args)) == Toy("x", 4, 0.25, 7, "b", ("q", "p"), True)
    assert parser().parse_args(["--fast", "--no-fast"]).fast is False


def test_choices_and_types_are_enforced():
    for argv in (["--kind", "c"], ["--steps", "1.5"], ["--limit", "x"]):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)


def test_help_text_and_group_title():
    p = argparse.ArgumentParser()
    add_options(p, Toy, only=("rate", "kind"), title="toy options")
    text = p.format_help()
    assert "toy options" in text and "the rate" in text and "which kind" in text
    assert "--steps" not in text and "--rate RATE, -r RATE" in text


def test_unknown_field_names_and_unsupported_types_are_errors():
    with pytest.raises(ValueError, match="no field.*nope"):
        add_options(argparse.ArgumentParser(), Toy, only=("nope",))
    with pytest.raises(ValueError, match="no field.*gone"):
        from_args(Toy, argparse.Namespace(), exclude=("gone",))
    with pytest.raises(TypeError, match="Toy.tags"):
        add_options(argparse.ArgumentParser(), Toy, only=("tags",))


def test_from_args_leaves_out_fields_without_an_option():
    assert from_args(Toy, argparse.Namespace(steps=9, other=1)) == {"steps": 9}


def test_comma_list():
    assert comma_list(" a, b ,,") == ("a", "b") and comma_list("") == ()


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    common.add_training_options(p)
    return p


def test_train_options_parse_to_the_default_config():
    args = train_parser().parse_args(["--task", "rte", "--output", "out"])
    assert TrainConfig(**common.config_fields(args)) == TrainConfig(task="rte", output="out")


def test_train_options_reach_the_config():
    args = train_parser().parse_args([
        "--task", "custom", "--output", "o", "--train-file", "t.tsv", "--dev-file", "d.tsv",
        "--text-columns", "a, b", "--label-column", "y", "--lr", "1e-4", "--head", "linear",
        "--meta-order", "first", "--meta-share-gradients", "--meta-optimizer", "adam", "--no-progress"])
    config = TrainConfig(**common.config_fields(args))
    assert config.text_columns == ("a", "b") and config.learning_rate == 1e-4 and config.head == "linear"
    assert config.meta.share_gradients is True and config.meta.optimizer == "adam" and args.progress is False


def test_every_train_config_field_is_an_option_of_metabert_train():
    from metabert.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    dests = {a.dest for a in sub.choices["train"]._actions}
    assert set(flatten(TrainConfig(task="rte", output="o"))) <= dests


@dataclass(frozen=True)
class Inner:
    rate: float = option(0.1, help="inner rate")
    inner_steps: int = 2  # already carries the prefix: keeps its name


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = section(Inner, "inner_", "inner options")


def test_a_section_is_a_group_of_prefixed_options_and_a_flat_dict():
    p = argparse.ArgumentParser()
    add_options(p, Outer)
    text = p.format_help()
    assert "inner options" in text and "--inner-rate" in text and "--inner-steps" in text
    args = p.parse_args(["--inner-rate", "0.5"])
    assert Outer(**from_args(Outer, args)) == Outer("x", Inner(0.5, 2))
    flat = flatten(Outer("y", Inner(0.3, 4)))
    assert flat == {"name": "y", "inner_rate": 0.3, "inner_steps": 4}
    assert Outer(**unflatten(Outer, flat)) == Outer("y", Inner(0.3, 4))
    with pytest.raises(ValueError, match="unknown option.*inner_nope"):
        unflatten(Outer, {"inner_nope": 1})


def test_train_config_keeps_its_flat_stored_form():
    config = TrainConfig(task="rte", output="o", meta=MetaConfig(order="second", inner_lr=0.0))
    stored = config.to_dict()
    assert stored["meta_order"] == "second" and stored["meta_lr"] == MetaConfig().meta_lr
    assert not any(isinstance(v, dict) for v in stored.values())
    assert TrainConfig.from_dict(stored) == config
    assert config.replace(meta_inner_lr=0.5).meta.inner_lr == 0.5
