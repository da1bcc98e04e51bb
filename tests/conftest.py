"""Shared test configuration.

* The repository root goes on ``sys.path`` so that ``import fixtures`` (the trained fixture models)
  works from any test module.
* Torch runs on one thread: the suite shares a small machine, and single-threaded CPU kernels make
  repeated calls bit-reproducible.
* The parity harness's reference cache (``signxai-parity``, ``assert_parity``) goes to a folder of
  this test session, removed at its end (unless ``$SIGNXAI_PARITY_CACHE`` names one), not the
  user's cache directory.
* Hypothesis uses the ``signxai`` profile: no deadline (CPU time is shared with other jobs), a modest
  number of examples, and no example database written into the checkout. Set
  ``HYPOTHESIS_PROFILE=thorough`` for a longer run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)

if "SIGNXAI_PARITY_CACHE" not in os.environ:
    os.environ["SIGNXAI_PARITY_CACHE"] = tempfile.mkdtemp(prefix="signxai-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SIGNXAI_PARITY_CACHE"], True)

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
