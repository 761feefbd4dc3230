"""Process exit codes of ``python -m learner`` and ``python -m actors``, fixed for every
deployment, and what a supervisor (a shell, a Kubernetes Job) should do with each.

Only ``OK`` means the run is over. A Kubernetes Job counts any exit 0 as a completed
index, so a learner or an actor stopped by SIGTERM (eviction, preemption, ``kubectl
delete pod``, a scale-down) must not exit 0: it exits ``TERMINATED``, which the Jobs'
``podFailurePolicy`` ignores (a new pod is made and resumes, nothing is counted against
``backoffLimit``; ops/README.md). Locally a run stopped by SIGTERM exits non-zero like any
Unix program stopped by a signal.
"""
from __future__ import annotations

import signal

OK = 0
"""The run is over (max_steps or the epochs done; an actor was told "shutdown")."""
ERROR = 2
"""A permanent failure, reported in one line (bad config, missing model, port in use):
restarting cannot help."""
LEARNER_GONE = 69
"""Actors only (sysexits EX_UNAVAILABLE): no learner answered for ``give_up_after_s``;
the run is over or the learner is gone for good."""
INTERRUPTED = 128 + signal.SIGINT
"""130: stopped by Ctrl-C before the run was over."""
TERMINATED = 128 + signal.SIGTERM
"""143: stopped gracefully by SIGTERM before the run was over (the learner finished its
step and checkpointed; actors handed their leases back). Start it again to continue:
``--resume auto`` (learner), a new actor (actors)."""


def from_returncode(code: int) -> int:
    """A child's ``Popen.returncode`` / ``Process.exitcode`` as a shell would report it:
    killed by signal N (a negative code) is 128 + N."""
    return 128 - code if code < 0 else code
