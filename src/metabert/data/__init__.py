"""Data: GLUE tasks and a user's files (one reader for TSV, CSV, JSONL and text), tokenisation and
length-bucketed batches, and the GLUE metrics. Imports nothing else of metabert but ``common``."""
