"""Stop requests: how a run is asked to stop at the end of an iteration.

A :class:`StopRequest` is what the Trainer checks between iterations; whoever owns the
process decides what sets it. The command line does with :func:`stop_on_signals` (the first
Ctrl-C, SIGTERM or SIGHUP asks for a stop and a checkpoint, a second one stops at once); a
library caller may set it from another thread, or pass none and let Ctrl-C raise
KeyboardInterrupt as anywhere else in Python.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

# The signals that stop a run as the first Ctrl-C does: SIGTERM is what `ray job stop`,
# Kubernetes and spot preemption send, SIGHUP what a closed terminal sends.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Interrupted(KeyboardInterrupt):
    """A second stop signal: the run stops at once. ``signum``: the signal (the process exits
    with 128 + it, as a shell reports a process killed by it)."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


class StopRequest:
    """Asks a run to stop after its current iteration (and write a checkpoint).
    ``requested``: whether it was asked; ``signum``: the signal that asked (None: none, or a
    request that came from code: :meth:`request` without a signal)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None

    def request(self, signum: Optional[int] = None) -> None:
        if not self.requested:
            self.requested, self.signum = True, signum


def _say(echo: Callable[[str], None], line: str) -> None:
    """``echo`` from a signal handler: a closed terminal (SIGHUP) must not turn the stop into a crash."""
    try:
        echo(line)
    except (OSError, ValueError):
        pass


@contextmanager
def stop_on_signals(stop: StopRequest, echo: Callable[[str], None] = lambda s: None) -> Iterator[StopRequest]:
    """While inside, the first stop signal (:data:`STOP_SIGNALS`) sets ``stop`` and says so at
    once; a second one raises :class:`Interrupted`. The handlers before are put back on exit.
    Process set-up for a command that owns its process: outside the main thread (no signals
    there) it installs nothing."""
    def handle(signum, frame):
        name = signal_name(signum)
        if stop.requested:
            _say(echo, f"[cot-ray] {name} again: stopping at once, without a checkpoint of this iteration")
            raise Interrupted(signum)
        stop.request(signum)
        _say(echo, f"[cot-ray] {name}: stopping after this iteration and writing a checkpoint "
                   f"({name} again stops at once, without one)")

    with _handling(STOP_SIGNALS, handle):
        yield stop


@contextmanager
def stop_signals_as_ctrl_c(came: list) -> Iterator[list]:
    """While inside, SIGTERM and SIGHUP act as Ctrl-C (a Ray Tune sweep handles SIGINT only: it
    stops the trials and saves the experiment for ``--resume``); each one is appended to
    ``came``. The handlers before are put back on exit; outside the main thread it does nothing."""
    def forward(signum, frame):
        came.append(signum)
        signal.raise_signal(signal.SIGINT)

    with _handling((signal.SIGTERM, signal.SIGHUP), forward):
        yield came


@contextmanager
def _handling(signals: tuple, handler) -> Iterator[None]:
    """``handler`` for ``signals`` while inside, the handlers before put back on exit; outside
    the main thread (no signals there) it installs nothing."""
    old: dict = {}
    for sig in signals:
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        yield
    finally:
        for sig, before in old.items():
            signal.signal(sig, before)


@contextmanager
def keeping_handlers() -> Iterator[None]:
    """The process's stop-signal handlers as they were before, whatever runs inside installs
    (``ray.init`` makes SIGTERM exit the driver at once): a library call leaves them to the
    program that owns the process."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                try:
                    signal.signal(sig, handler)
                except ValueError:  # not the main thread: nothing was installed here either
                    break

