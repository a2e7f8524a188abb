"""metabert: early-exit BERT-family classifiers, trained as in MetaBERT (and its peers)."""

from metabert.modeling import EarlyExitOutput, MultiExitBert, MultiExitConfig

__all__ = ["MultiExitBert", "MultiExitConfig", "EarlyExitOutput"]
__version__ = "0.1.0"
