"""Pre-emption: SIGTERM / SIGUSR1 ask the engine to stop after the current step.

The engine finishes the update in progress, writes a checkpoint, and raises
:class:`Preempted`; ``medgen-train fit`` then exits with :data:`REQUEUE_EXIT_CODE` (75,
``EX_TEMPFAIL``: "try again"), which ``examples/slurm/fit.sbatch`` turns into
``scontrol requeue``. SLURM sends SIGUSR1 ahead of the time limit with
``#SBATCH --signal=B:USR1@120`` and SIGTERM on pre-emption or ``scancel``.
"""

from __future__ import annotations

import signal
import threading

from medgen.train.errors import MedGenError

REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(MedGenError):
    """Training stopped on a signal after writing a checkpoint; requeue to resume."""

    exit_code = REQUEUE_EXIT_CODE

    def __init__(self, step: int, checkpoint: str, signal_name: str) -> None:
        super().__init__(
            f"{signal_name} received: stopped after step {step}, checkpoint {checkpoint}; "
            f"exit code {REQUEUE_EXIT_CODE} asks the job script to requeue"
        )
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class StopFlag:
    """Installs handlers for :data:`SIGNALS` while active (main thread only); restores the
    previous handlers on exit."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: the previous handler was not installed from Python; restore the default
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
