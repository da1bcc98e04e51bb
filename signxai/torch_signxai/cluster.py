"""Connecting to a Ray cluster (the ray extra), for :mod:`.dataset_ray` and the parity harness.

``address='local'`` starts a single-node cluster on this machine bound to 127.0.0.1 with the
dashboard off (Ray otherwise advertises the host's own address); any other address goes to
``ray.init`` (``'auto'`` for a running cluster, ``'ray://host:10001'``). Workers get a
``PYTHONPATH`` of this process's own source folders (not the Python installation's), so they can
import the classes of the models they receive; on a cluster of other machines those must be
installed there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["connect", "source_folders"]


def source_folders() -> list[str]:
    """The folders of ``sys.path`` outside the Python installation (the working directory, a
    checkout, the folder of a user's model module)."""
    prefixes = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    folders = [str(Path(p or os.getcwd()).resolve()) for p in sys.path]
    return [f for f in dict.fromkeys(folders) if Path(f).is_dir() and not f.startswith(prefixes)]


def connect(address: str, cpus: int, environment: dict[str, str] | None = None) -> bool:
    """Connect this process to the Ray cluster at ``address`` unless it is connected already.

    Parameters
    ----------
    address : str
        'local' starts a cluster of ``cpus`` CPUs here; else a cluster address for ``ray.init``.
    cpus : int
        CPUs of a local cluster.
    environment : dict, optional
        Environment variables for the workers (added to the ``PYTHONPATH`` of
        :func:`source_folders`).

    Returns
    -------
    bool
        True when this call connected (the caller then calls ``ray.shutdown()``).
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError("Ray is not installed: install the ray extra: pip install 'signxai[ray]'") from error
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(source_folders()), **(environment or {})}}
    if address == "local":
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=False,
        )
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    return True
