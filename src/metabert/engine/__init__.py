"""The early-exit engine, independent of any model: exit policies (``policies``), the one loop over a
runner's layers (``loop``), which policy answers (``resolve``) and runs over a whole data set
(``dataset``). A runner is anything with ``start``/``step``/``select``/``full`` (``loop.Runner``)."""
