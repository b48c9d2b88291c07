"""A kernel timer (Linux `timerfd`) that the event loop waits on like a socket.

The loop's own timers wake up to a millisecond late: epoll takes its timeout in whole
milliseconds, rounded up. A paced load started from them counts that lateness (0.6 ms
at the median on this machine, with nothing else to do) against whatever it measures.
A timerfd wakes epoll on time, to a few microseconds. Python 3.11 has no binding for it
(`os.timerfd_create` came in 3.13), hence the two libc calls through ctypes."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Callable

CLOCK_MONOTONIC = 1  # perf_counter's clock on Linux
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)


def available() -> bool:
    """Whether this system has timerfd, on the clock `time.perf_counter()` reads."""
    return hasattr(_libc, "timerfd_create") and time.get_clock_info("perf_counter").implementation.endswith(
        "(CLOCK_MONOTONIC)"
    )


class KernelTimer:
    """One-shot, re-armed with `at`; its file descriptor turns readable when it fires."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd

    def at(self, when: float) -> None:
        """Fire at `when`, a `time.perf_counter()` reading (at once if that has passed)."""
        ns = max(1, int(when * 1e9))  # an all-zero time would disarm it instead
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> bool:
        """Consume a firing; False if it had not fired (a wake-up for an older arming)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)


class Alarm:
    """Calls `callback` on the loop at a `time.perf_counter()` reading: through a kernel
    timer where there is one, else through the loop's own timer (and its lateness)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop, self._callback = loop, callback
        self._timer = KernelTimer() if available() else None
        self._handle: asyncio.TimerHandle | None = None
        if self._timer is not None:
            loop.add_reader(self._timer.fd, self._fired)

    def _fired(self) -> None:
        assert self._timer is not None
        if self._timer.clear():
            self._callback()

    def at(self, when: float) -> None:
        """Call back at `when`, in place of any earlier arming (as timerfd_settime does)."""
        if self._timer is not None:
            self._timer.at(when)
        else:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(self._loop.time() + when - time.perf_counter(), self._callback)

    def close(self) -> None:
        if self._timer is not None:
            self._loop.remove_reader(self._timer.fd)
            self._timer.close()
        elif self._handle is not None:
            self._handle.cancel()
