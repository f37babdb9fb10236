"""Stopping on signals: SIGTERM / SIGUSR1 (pre-emption, time limit) and SIGINT (Ctrl-C).

Each asks the engine to stop after the update in progress: it writes a checkpoint and raises
:class:`Preempted`, which the CLI turns into exit status 75 (``EX_TEMPFAIL``, "requeue me";
``examples/slurm/fit.sbatch`` runs ``scontrol requeue`` on it) for SIGTERM / SIGUSR1, and 130
for Ctrl-C. A second Ctrl-C aborts at once (Python's KeyboardInterrupt): the last checkpoint
on disk is untouched. Commands install the handlers before they load data or join a process
group, so a signal during start-up is not lost either: training then stops before its first
update, with nothing new written.
"""

from __future__ import annotations

import signal
import sys
import threading

from medgen.train.errors import EXIT_INTERRUPTED, EXIT_REQUEUE, MedGenError

REQUEUE_EXIT_CODE = EXIT_REQUEUE
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(MedGenError):
    """Training stopped on a signal after writing a checkpoint; rerun the same command (or let
    the job script requeue it) to resume."""

    def __init__(self, step: int, checkpoint, signal_name: str | None) -> None:
        signal_name = signal_name or "signal"
        interrupted = signal_name == "SIGINT"
        self.exit_code = EXIT_INTERRUPTED if interrupted else EXIT_REQUEUE
        what = "Ctrl-C" if interrupted else f"{signal_name} received"
        then = (
            "run the same command to resume"
            if interrupted
            else f"exit code {EXIT_REQUEUE} asks the job script to requeue"
        )
        super().__init__(
            f"{what}: stopped after step {step}, checkpoint {checkpoint or 'none'}; {then}"
        )
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class StopFlag:
    """Records the first of :data:`SIGNALS` while active (main thread only) and restores the
    previous handlers on exit. After a first SIGINT, the next one raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(
                "\nmedgen-train: Ctrl-C: finishing this step and writing a checkpoint "
                "(press Ctrl-C again to abort without one)",
                file=sys.stderr,
                flush=True,
            )

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
