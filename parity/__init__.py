"""Parity tooling: compare signxai's PyTorch maps with iNNvestigate's on Keras twins.

This package imports nothing heavy at import time. Only :mod:`parity.twin`
imports TensorFlow, so ``import parity`` works without the ``parity`` extra.
"""
