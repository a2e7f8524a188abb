"""Markdown pages and their plots, generated from the JSON results of the project's commands."""
