"""The multi-exit model: encoder families run layer by layer (``families``), where weights come from
(``backbones``), ``MultiExitBert`` with an exit after every layer and its eager runner (``multi_exit``)."""
