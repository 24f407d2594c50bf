"""mtl-paradigms: a reproducibility harness for multi-task-learning optimization research."""

__version__ = "0.1.0"
