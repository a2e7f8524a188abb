"""Does running two paths alternately, example by example, slow them down against each path
running alone (as a server runs it)? ORT full and early exit over an exported folder, batch 1.

Usage: GLUE_DIR=... python benchmarks/interleave_check.py ONNX_FOLDER GAMMA [EXAMPLES] [ROUNDS]
(the SST-2 dev examples in file order; 2 threads). Prints mean ms per example both ways, per round.
Run it on an otherwise idle machine."""

import os
import sys
import time

from metabert.engine import loop as engine
from metabert.data.batching import collate, encode, model_inputs
from metabert.data.tasks import load_glue
from metabert.engine.policies import get_policy
from metabert.deploy.ort_runner import OrtMultiExit


def main(folder: str, gamma: float, count: int = 300, rounds: int = 2) -> None:
    runner = OrtMultiExit(folder, threads=2)
    policy = get_policy("entropy", gamma)
    data = encode(load_glue("sst2", "dev", os.environ.get("GLUE_DIR")), runner.tokenizer, 128)
    singles = [model_inputs(collate(data, [i], runner.tokenizer.pad_token_id)) for i in range(count)]
    paths = {"full": lambda x: engine.run_full(runner, x), "early": lambda x: engine.run(runner, x, policy)}
    for x in singles[:20]:
        for run in paths.values():
            run(x)

    def alone(run):
        start = time.perf_counter()
        for x in singles:
            run(x)
        return (time.perf_counter() - start) / count * 1e3

    def alternating():
        spent = dict.fromkeys(paths, 0.0)
        for x in singles:
            for name, run in paths.items():
                start = time.perf_counter()
                run(x)
                spent[name] += time.perf_counter() - start
        return {name: t / count * 1e3 for name, t in spent.items()}

    for r in range(rounds):
        solo = {name: alone(run) for name, run in paths.items()}
        mixed = alternating()
        print(f"round {r + 1}: alone full {solo['full']:.3f} ms, early {solo['early']:.3f} ms "
              f"(ratio {solo['full'] / solo['early']:.2f}); alternating full {mixed['full']:.3f} ms, early "
              f"{mixed['early']:.3f} ms (ratio {mixed['full'] / mixed['early']:.2f})")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *(int(a) for a in sys.argv[3:5]))
