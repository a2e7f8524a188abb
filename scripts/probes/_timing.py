"""The interleaved timing loop the probes share: each round runs every variant over its examples
in turn (after a few warm-up calls), so each variant sees the machine at every moment of the run."""
import numpy as np


def interleaved(variants: dict, rounds: int, repeat: int = 1, warm: int = 5) -> dict[str, list[float]]:
    """{name: (fn, examples)} -> {name: µs per call in each round}; fn is called on each example."""
    import time

    out = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (fn, examples) in variants.items():
            for x in examples[:warm]:
                fn(x)
            start = time.perf_counter()
            for x in examples:
                for _ in range(repeat):
                    fn(x)
            out[name].append((time.perf_counter() - start) / len(examples) / repeat * 1e6)
    return out


def report(results: dict[str, list[float]], unit: str = "us per call") -> None:
    for name, values in results.items():
        print(f"{name}: median {np.median(values):.1f} {unit} (rounds: {', '.join(f'{v:.0f}' for v in values)})")


def sst2_dev(count: int | None = None) -> list[tuple[str, int]]:
    """The first ``count`` (all if None) SST-2 dev sentences and labels, read by metabert's GLUE
    reader from $GLUE_DIR."""
    from metabert.data.tasks import load_glue

    return [(e.text, e.label) for e in load_glue("sst2", "dev").examples[:count]]


def sst2_inputs(model, count: int | None = None) -> list[dict]:
    """The first ``count`` SST-2 dev sentences, each tokenised alone (batch 1) by ``model``'s tokenizer."""
    return [dict(model.tokenizer([t], return_tensors="pt")) for t, _ in sst2_dev(count)]
