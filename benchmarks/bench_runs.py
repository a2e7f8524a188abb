"""Each deployment target of several `metabert bench` reports side by side, and in how many runs it
was met (`metabert.recipes.pages.bench.targets_across_runs`).

Usage: python benchmarks/bench_runs.py REPORT.json [REPORT.json ...] > OUTPUT.md
Files are named in the page as given; run it from the folder that holds them, e.g.
`cd results/bench/runs && python ../../../benchmarks/bench_runs.py sst2-*.bench.json > targets.md`.
"""

import json
import sys
from pathlib import Path

from metabert.recipes.pages.bench import targets_across_runs

if __name__ == "__main__":
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    sys.stdout.write(targets_across_runs([(f, json.loads(Path(f).read_text())) for f in files]))
