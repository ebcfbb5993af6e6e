"""kvlab: a Dynamo-style replicated key-value store you can watch and break."""

__version__ = "0.1.0"
