"""Duplicate finding: ``clusters.py`` groups the self-join's pairs into clusters, ``keeper.py`` picks whom to keep."""
