"""``metabert reproduce``: MetaBERT's Tables I and II and Fig. 2, every (task, method, seed) a cell
(``cells``: train, calibrate on the held-out slice, evaluate; resumable), what the cells say
together (``stats``), the page and plots (``pages``), and the paper's own figures (``paper``)."""
