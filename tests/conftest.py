"""Shared test configuration.

* The repository root goes on ``sys.path`` so that ``import fixtures`` (the trained fixture models)
  works from any test module.
* Torch runs on one thread: the suite shares a small machine, and single-threaded CPU kernels make
  repeated calls bit-reproducible.
* Hypothesis uses the ``signxai`` profile: no deadline (CPU time is shared with other jobs), a modest
  number of examples, and no example database written into the checkout. Set
  ``HYPOTHESIS_PROFILE=thorough`` for a longer run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)

settings.register_profile(
    "signxai",
    deadline=None,
    max_examples=15,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "signxai"))
