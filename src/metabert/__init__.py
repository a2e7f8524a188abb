"""metabert: early-exit BERT-family classifiers, trained as in MetaBERT (and its peers).

The public API (see docs/API.md); everything else is internal and may move.
"""

from metabert.engine import ExitResult, Runner
from metabert.engine import run as run_early_exit_batch
from metabert.exits import POLICIES, ExitPolicy, get_policy, simulate_exits
from metabert.modeling import EagerRunner, MultiExitBert, MultiExitConfig
from metabert.policy import Resolved, resolve

__all__ = [
    "MultiExitBert", "MultiExitConfig", "EagerRunner", "ExitResult", "Runner", "run_early_exit_batch",
    "ExitPolicy", "POLICIES", "get_policy", "simulate_exits", "Resolved", "resolve",
]
__version__ = "0.1.0"
