"""docs/USAGE.md's "Every option" section is the command line as it is: one table per command,
holding every option that command's parser takes, and none that it does not."""

import argparse
import re
from pathlib import Path

from metabert.cli import build_parser

USAGE = Path(__file__).resolve().parents[1] / "docs" / "USAGE.md"
OPTION = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")


def parser_options() -> dict[str, set[str]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions if not isinstance(a, argparse._HelpAction) for s in a.option_strings}
            for name, p in sub.choices.items()}


def documented_options(text: str) -> dict[str, set[str]]:
    """Per `### \\`metabert NAME\\`` heading of the "Every option" section: the options named in the
    first column of its table."""
    section = text.split("\n## Every option\n", 1)[1]
    found = {}
    for block in re.split(r"^### ", section, flags=re.M)[1:]:
        name = re.match(r"`metabert ([\w-]+)`", block).group(1)
        first_cells = re.findall(r"^\| `([^`]*)` \|", block, flags=re.M)
        found[name] = {o for cell in first_cells for o in OPTION.findall(cell)}
    return found


def test_every_command_and_option_is_documented_and_nothing_else():
    ours, theirs = parser_options(), documented_options(USAGE.read_text(encoding="utf-8"))
    assert sorted(theirs) == sorted(ours), "one table per command, in docs/USAGE.md's Every option section"
    problems = [f"metabert {name}: {sorted(ours[name] - theirs[name])} undocumented, "
                f"{sorted(theirs[name] - ours[name])} documented but not taken"
                for name in ours if ours[name] != theirs[name]]
    assert not problems, "\n".join(problems)


def test_the_check_notices_a_missing_and_an_extra_option():
    text = USAGE.read_text(encoding="utf-8")
    assert "| `--skip-bad` |" in text
    changed = documented_options(text.replace("| `--skip-bad` |", "| `--skip-bade` |"))
    assert "--skip-bad" not in changed["predict"] and "--skip-bade" in changed["predict"]
    assert changed["predict"] != parser_options()["predict"]
