"""Typed results of an evaluation, and their JSON form.

``ExitRun``: what one exit policy did on a data set (score, mean exit layer, layer speed-up, exits
per layer; wall-clock timing when it was a real, timed run). ``EarlyExitReport``: a checkpoint on a
data set, the score of every exit, and early exit as a sweep of simulated policies and/or one timed
run. ``to_dict()`` writes the JSON that ``metabert evaluate --output`` stores, with a
``schema_version``; ``EarlyExitReport.from_dict`` reads it back, older files too.

Schema versions: 1 (no ``schema_version`` field): early exit under ``early_exit``, a list for a
sweep and one object for a timed run. 2: ``sweep`` (a list, maybe empty) and ``timed`` (an object or
null), so that no reader needs to ask which shape it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Timing:
    """One timed early-exit run against the full model over the same batches (a sanity figure: one
    repetition, not a benchmark; ``metabert bench`` measures speed)."""

    wall_time_s: float
    full_model_wall_time_s: float
    wall_speedup: float
    batch_size: int


@dataclass(frozen=True)
class ExitRun:
    """One exit policy's outcome on a data set. ``figures``: every figure of the task's metric
    (``metrics.compute``: ``score`` and its parts, e.g. accuracy and F1)."""

    policy: str
    threshold: float | None
    patience: int | None
    figures: dict[str, float]
    mean_exit_layer: float
    layer_speedup: float
    exit_counts: tuple[int, ...]  # samples leaving at each exit, first to last
    timing: Timing | None = None

    @property
    def score(self) -> float:
        return self.figures["score"]

    def to_dict(self) -> dict:
        out = {"policy": self.policy, "threshold": self.threshold, "patience": self.patience, **self.figures,
               "mean_exit_layer": self.mean_exit_layer, "layer_speedup": self.layer_speedup,
               "exit_counts": list(self.exit_counts)}
        if self.timing is not None:
            out.update({f.name: getattr(self.timing, f.name) for f in fields(Timing)})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ExitRun":
        keys = {"policy", "threshold", "patience", "mean_exit_layer", "layer_speedup", "exit_counts"}
        timing_keys = {f.name for f in fields(Timing)}
        timing = Timing(**{k: data[k] for k in timing_keys}) if timing_keys <= set(data) else None
        figures = {k: v for k, v in data.items() if k not in keys | timing_keys}
        return cls(data["policy"], data.get("threshold"), data.get("patience"), figures,
                   data["mean_exit_layer"], data["layer_speedup"], tuple(data["exit_counts"]), timing)


@dataclass(frozen=True)
class EarlyExitReport:
    """A checkpoint evaluated on a data set: the score of every exit (MetaBERT Fig. 2), a sweep of
    simulated policies, and/or one timed early-exit run. ``context``: where it came from (task,
    split, data file relative to the data folder, checkpoint, where the policy came from)."""

    metric: str
    num_layers: int
    num_examples: int
    per_exit: tuple[dict, ...]  # {"layer": i, "score": ..., the metric's parts}, first exit first
    sweep: tuple[ExitRun, ...] = ()
    timed: ExitRun | None = None
    context: dict = field(default_factory=dict)

    def with_context(self, **context) -> "EarlyExitReport":
        return EarlyExitReport(self.metric, self.num_layers, self.num_examples, self.per_exit, self.sweep,
                               self.timed, {**self.context, **context})

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **self.context, "metric": self.metric,
                "num_layers": self.num_layers, "num_examples": self.num_examples, "per_exit": list(self.per_exit),
                "sweep": [r.to_dict() for r in self.sweep],
                "timed": self.timed.to_dict() if self.timed is not None else None}

    @classmethod
    def from_dict(cls, data: dict) -> "EarlyExitReport":
        """A report from its JSON form, of any schema version so far."""
        version = data.get("schema_version", 1)
        if version > SCHEMA_VERSION:
            raise ValueError(f"report schema version {version} is newer than this metabert reads "
                             f"({SCHEMA_VERSION}): upgrade metabert")
        if version == 1:
            old = data.get("early_exit")
            sweep, timed = (old, None) if isinstance(old, list) else ([], old)
        else:
            sweep, timed = data["sweep"], data["timed"]
        own = {"schema_version", "metric", "num_layers", "num_examples", "per_exit", "early_exit", "sweep", "timed"}
        return cls(data["metric"], data["num_layers"], data["num_examples"], tuple(data["per_exit"]),
                   tuple(ExitRun.from_dict(r) for r in sweep or ()),
                   ExitRun.from_dict(timed) if timed else None,
                   {k: v for k, v in data.items() if k not in own})
