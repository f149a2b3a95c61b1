"""nnctl: declare, train, inspect and verify neural networks from a YAML file."""

__version__ = "0.1.0"
