"""Experiments on top of the engine: ``bench`` (methods × seeds, paired statistics), ``tune`` (selection on a
validation split with the same budget for every method), ``speed`` (throughput against n), and ``stats``."""
