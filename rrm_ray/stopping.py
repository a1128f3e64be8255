"""SIGTERM and SIGINT as a request to stop at the next step boundary, within a bounded time.

What sends them: `rrm-ray stop` / `ray job stop` (SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S,
3 s unless the job's runtime env says otherwise: `rrm-ray submit` sets it), Kubernetes and Slurm
(SIGTERM, SIGKILL 30 s later by default), Ctrl-C (SIGINT).

    signal -> GracefulStop.signum set; the step in flight goes on (a handler must not do the work)
    job, at its next step boundary -> `reached_boundary()`, checkpoint, close the run as KILLED
    no boundary within `grace_s`, or a second signal -> KeyboardInterrupt in the main thread: the
        command closes the run as KILLED at once (the last checkpoint stays)
    exit status 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports it

`ray.init` replaces a SIGTERM handler with its own `sys.exit`; `rrm_ray.clients.cluster.connect_ray`
puts the handler installed before it back.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Installs handlers for SIGTERM and SIGINT (main thread only) while in use as a context manager."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self.expired = False
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reached_boundary()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by the signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal, or the grace ran out (`_expire`)
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after the step in flight (up to {self.grace_s:g}s, "
            "trainer.stop_grace_s), then a checkpoint; signal again to stop at once",
            file=sys.stderr,
            flush=True,
        )
        self._timer = threading.Timer(self.grace_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        print(
            f"no step boundary within trainer.stop_grace_s={self.grace_s:g}s: stopping now",
            file=sys.stderr,
            flush=True,
        )
        _thread.interrupt_main(signal.SIGINT)  # runs `_handle` in the main thread, which raises

    def reached_boundary(self) -> None:
        """The job stopped at a boundary: the checkpoint that follows is not cut short by the grace."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
