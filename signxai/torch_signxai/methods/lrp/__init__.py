"""LRP family on Zennit (entry point :func:`.family.lrp`): iNNvestigate's rules (:mod:`.rules`,
each rule's identity in :mod:`.table`) on layer views (:mod:`.views`), chosen per layer kind by a
plan (:mod:`.plan`) and attached by hooks (:mod:`.hooks`) in one
composite (:mod:`.composite`), after the model was checked (:mod:`.guard`).

A model fx can trace runs as its graph with every functional operation a module of its own
(:mod:`..modular`); any other model runs as a chain in execution order."""

from __future__ import annotations

from ..graph import UnsupportedLayerError

__all__ = ["UnsupportedLayerError"]
