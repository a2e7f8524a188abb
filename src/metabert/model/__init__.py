"""The multi-exit model: encoder families run layer by layer (``families``), where weights come from
(``backbones``), ``MultiExitBert`` with an exit after every layer and its eager runner (``multi_exit``)."""

POOLINGS = ("mean", "cls")  # how an exit reads its layer: the mean over real tokens, or the first token
HEADS = ("pooler", "linear")  # an exit classifier: dense + tanh + linear (DeeBERT), or linear alone
HEAD_INITS = ("random", "pooler")  # exit dense layers drawn at random, or from the backbone's pooler
