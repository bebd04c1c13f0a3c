"""Plots (:mod:`storm.pl`): spatial maps over the H&E, embeddings, expression, clinical."""

from ._spatial import spatial

__all__ = ["spatial"]
