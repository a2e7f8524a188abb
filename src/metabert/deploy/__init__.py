"""Deployment: exported graphs and their runtimes (the restructured layout's ``metabert.deploy``)."""
