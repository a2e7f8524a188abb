"""Rewrite absolute data paths in committed result files and docs to names relative to the data
folder (``/any/where/glue/SST-2/train.tsv`` -> ``SST-2/train.tsv``). Idempotent: a file with no
absolute path is left as it is. The project's code writes relative names itself
(``metabert.eval.calibrate.data_name``); this fixes files made before it did.

    python scripts/relative_data_paths.py results docs
"""

import re
import sys
from pathlib import Path

ABSOLUTE = re.compile(r"(?<![\w.])/(?:[^\s\"'`]+/)+?([A-Za-z0-9_-]+/[A-Za-z0-9_.-]+\.(?:tsv|csv|jsonl))")


def rewrite(text: str) -> str:
    return ABSOLUTE.sub(r"\1", text)


def main(roots: list[str]) -> int:
    changed = 0
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.suffix not in (".json", ".md") or not path.is_file():
                continue
            text = path.read_text()
            new = rewrite(text)
            if new != text:
                path.write_text(new)
                changed += 1
    print(f"{changed} file(s) rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["results", "docs"]))
