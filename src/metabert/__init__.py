"""metabert: early-exit BERT-family classifiers, trained as in MetaBERT (and its peers).

The public API, documented in docs/API.md; everything else is internal and may move. The recipes
(``metabert.recipes``: the paper's tables, results pages) use only these names.
"""

from metabert.model.backbones import source_num_layers
from metabert.data.batching import Encoded, encode
from metabert.bench.timing import format_table as format_bench_table
from metabert.eval.calibrate import calibration_set, choose
from metabert.data.tasks import DataError, Dataset, TaskSpec, get_task, glue_file, load_glue
from metabert.engine.loop import ExitResult, Runner
from metabert.engine.loop import run as run_early_exit_batch
from metabert.eval.evaluate import (all_exit_logits, evaluate, per_exit_scores, plot_grid, plot_report, pyplot,
                                 simulate)
from metabert.engine.policies import POLICIES, ExitPolicy, get_policy, simulate_exits
from metabert.common.machine import hardware
from metabert.training.methods.meta import MetaConfig
from metabert.training.methods.core import METHODS, is_static_method
from metabert.model.multi_exit import EagerRunner, MultiExitBert, MultiExitConfig
from metabert.engine.resolve import Resolved, resolve
from metabert.eval.reports import EarlyExitReport, ExitRun, Timing
from metabert.training.trainer import Callback, Trainer, TrainState
from metabert.training.config import RESUME_FREE, TrainConfig, read_log, state_file, train

__all__ = [
    # model and inference
    "MultiExitBert", "MultiExitConfig", "EagerRunner", "ExitResult", "Runner", "run_early_exit_batch",
    "ExitPolicy", "POLICIES", "get_policy", "simulate_exits", "Resolved", "resolve",
    # data
    "Dataset", "TaskSpec", "Encoded", "get_task", "load_glue", "glue_file", "DataError", "encode", "source_num_layers",
    # training
    "TrainConfig", "MetaConfig", "METHODS", "is_static_method", "train", "Trainer", "TrainState", "Callback", "read_log", "state_file",
    "RESUME_FREE",
    # evaluation, calibration and results
    "evaluate", "all_exit_logits", "per_exit_scores", "simulate", "EarlyExitReport", "ExitRun", "Timing",
    "calibration_set", "choose", "plot_report", "plot_grid", "pyplot", "format_bench_table", "hardware",
]
__version__ = "0.1.0"
