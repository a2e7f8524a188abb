"""Recipes: experiments composed from the library's public API (``from metabert import ...`` only),
as torchtune keeps its recipes apart from its library. ``reproduce`` trains and tabulates the
paper's Tables I and II; ``report`` turns result folders and benchmark reports into Markdown pages.
Every figure they print comes from a result file, never from a constant in code (the paper's own
figures, printed beside ours, are read from ``paper_tables.json``)."""
