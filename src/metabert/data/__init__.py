"""Data: GLUE tasks and a user's files (one reader for TSV, CSV, JSONL and text), tokenisation and
length-bucketed batches, and the GLUE metrics. Imports nothing else of metabert but ``common``."""

DEFAULT_MAX_LENGTH = 128  # tokens per example (longer ones truncated) unless a command says otherwise
