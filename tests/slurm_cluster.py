"""Gate for tests that need a real SLURM (the local one from slurm/local/up.sh).

    from tests.slurm_cluster import require_slurm

    def test_something_on_slurm(tmp_path):
        require_slurm()
        ...

Outside CI such tests skip with a clear reason when no cluster answers; under
CI=true they fail instead, because CI is supposed to have brought it up.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

REASON = "no local SLURM: run slurm/local/up.sh"

# Node states (sinfo %T) in which the node can run jobs. A trailing "*" means
# slurmctld has lost contact with slurmd; DOWN/DRAINED nodes accept nothing.
_USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


@functools.lru_cache(maxsize=None)
def slurm_available() -> bool:
    """True if `sinfo` is on PATH and the controller reports a responding, usable node.

    Probed once per process (cached): with the daemons down but the packages
    installed, sinfo keeps retrying the controller for 15+ s, which would
    otherwise be paid by every skipped test.
    """
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return False
    try:
        # Normally answers in ~20 ms; bound the retries against a dead controller.
        out = subprocess.run(
            [sinfo, "--noheader", "--Node", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode != 0:
        return False
    return any(state.strip() in _USABLE_STATES for state in out.stdout.splitlines())


def require_slurm() -> None:
    """Skip the calling test when no SLURM answers (fail instead under CI=true)."""
    if slurm_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(REASON)
    pytest.skip(REASON)
