"""metabert: early-exit BERT-family classifiers, trained as in MetaBERT (and its peers).

The public API, documented in docs/API.md; everything else is internal and may move. The recipes
(``metabert.recipes``: the paper's tables, results pages) use only these names.

Names are loaded on first use (PEP 562), so ``import metabert`` and the plain-Python parts (configs,
options, data readers) import no torch; ``from metabert import MultiExitBert`` works as always.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> (module, attribute in it)
_API = {
    # model and inference
    "MultiExitBert": ("metabert.model.multi_exit", "MultiExitBert"),
    "MultiExitConfig": ("metabert.model.multi_exit", "MultiExitConfig"),
    "EagerRunner": ("metabert.model.multi_exit", "EagerRunner"),
    "ExitResult": ("metabert.engine.loop", "ExitResult"),
    "Runner": ("metabert.engine.loop", "Runner"),
    "run_early_exit_batch": ("metabert.engine.loop", "run"),
    "ExitPolicy": ("metabert.engine.policies", "ExitPolicy"),
    "POLICIES": ("metabert.engine.policies", "POLICIES"),
    "get_policy": ("metabert.engine.policies", "get_policy"),
    "simulate_exits": ("metabert.engine.policies", "simulate_exits"),
    "Resolved": ("metabert.engine.resolve", "Resolved"),
    "resolve": ("metabert.engine.resolve", "resolve"),
    # data
    "Dataset": ("metabert.data.tasks", "Dataset"),
    "TaskSpec": ("metabert.data.tasks", "TaskSpec"),
    "Encoded": ("metabert.data.batching", "Encoded"),
    "get_task": ("metabert.data.tasks", "get_task"),
    "load_glue": ("metabert.data.tasks", "load_glue"),
    "glue_file": ("metabert.data.tasks", "glue_file"),
    "DataError": ("metabert.data.files", "DataError"),
    "encode": ("metabert.data.batching", "encode"),
    "source_num_layers": ("metabert.model.backbones", "source_num_layers"),
    # training
    "TrainConfig": ("metabert.training.config", "TrainConfig"),
    "MetaConfig": ("metabert.training.methods.options", "MetaConfig"),
    "METHODS": ("metabert.training.methods", "METHODS"),
    "is_static_method": ("metabert.training.methods", "is_static_method"),
    "train": ("metabert.training.trainer", "train"),
    "Trainer": ("metabert.training.trainer", "Trainer"),
    "TrainState": ("metabert.training.trainer", "TrainState"),
    "Callback": ("metabert.training.callbacks", "Callback"),
    "read_log": ("metabert.training.state", "read_log"),
    "state_file": ("metabert.training.state", "state_file"),
    "RESUME_FREE": ("metabert.training.state", "RESUME_FREE"),
    # evaluation, calibration and results
    "evaluate": ("metabert.eval.evaluate", "evaluate"),
    "all_exit_logits": ("metabert.eval.evaluate", "all_exit_logits"),
    "per_exit_scores": ("metabert.eval.evaluate", "per_exit_scores"),
    "simulate": ("metabert.eval.evaluate", "simulate"),
    "EarlyExitReport": ("metabert.eval.reports", "EarlyExitReport"),
    "ExitRun": ("metabert.eval.reports", "ExitRun"),
    "Timing": ("metabert.eval.reports", "Timing"),
    "calibration_set": ("metabert.eval.calibrate", "calibration_set"),
    "choose": ("metabert.eval.calibrate", "choose"),
    "plot_report": ("metabert.eval.plots", "plot_report"),
    "plot_grid": ("metabert.eval.plots", "plot_grid"),
    "pyplot": ("metabert.eval.plots", "pyplot"),
    "format_bench_table": ("metabert.bench.timing", "format_table"),
    "hardware": ("metabert.common.machine", "hardware"),
}

__all__ = list(_API)


def __getattr__(name: str):
    try:
        module, attribute = _API[name]
    except KeyError:
        raise AttributeError(f"module 'metabert' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
