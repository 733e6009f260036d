"""Engines that decode and embed somewhere other than this process. Planning (what is new, changed, moved,
deleted) and writing to the store stay in :mod:`visdex.ingest`; an engine only turns files into vectors.

- :mod:`visdex.engines.ray_data`: Ray Data on a Ray cluster (or a local one), ``visdex index --engine ray``.
"""
