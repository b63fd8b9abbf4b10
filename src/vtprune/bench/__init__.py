"""Benchmarks: wall-clock speed of pruned vs unpruned models (``speed``) and the cost of the
selection step alone (``overhead``). Run them with ``vtprune bench speed|overhead``."""
