r"""Graceful interrupts: SIGINT/SIGTERM set a flag that long loops check.

A ``KeyboardInterrupt`` raised at a random moment may land inside JAX's
callbacks (where Python prints "Exception ignored" and swallows it) or inside
XLA compilation (where it can crash the process). The command line therefore
installs :func:`install` before any heavy import: the first signal only
records itself, and the trainer (between epochs) or the gradient-check sweep
(between configurations) calls :func:`requested` and stops cleanly. A second
signal means "stop now": the process exits at once with the signal's exit
code (128 + signal number). Files are written atomically (temporary file,
fsync, rename), so even that leaves every saved file whole.

The state is one per process by nature (signal handlers are), so it lives in
the process's signal table, not in a module-level variable: ``install``
returns an :class:`Interrupts` object the caller keeps and passes on.
"""
from __future__ import annotations

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
  r"""Records SIGINT/SIGTERM; :meth:`requested` says whether one came."""

  def __init__(self, message: str = ""):
    self.signum = None
    self.message = message  # printed on the first signal, e.g. what happens
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # the second signal: stop now
      os.write(2, f"\n{self.prefix}: stopped at once (signal "
               f"{signal.Signals(signum).name})\n".encode())
      os._exit(128 + signum)
    self.signum = signum
    if self.message:
      os.write(2, f"\n{self.prefix}: {self.message}\n".encode())

  prefix = "fnn"

  def install(self) -> "Interrupts":
    for s in SIGNALS:
      try:
        self._previous[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread (e.g. called from a library)
        pass
    return self

  def restore(self) -> None:
    r"""Puts the previous handlers back, unless a signal came.

    After a signal the process is on its way out (the command returns 130),
    and a second signal must still stop it at once, quietly, even while
    Python's exit handlers (JAX's backend clean-up) run.
    """
    if self.signum is not None:
      return
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous.clear()

  def requested(self) -> bool:
    return self.signum is not None

  @property
  def exit_code(self) -> int:
    return 128 + (self.signum or signal.SIGINT)


def install(prefix: str = "fnn", message: str = "") -> Interrupts:
  r"""Installs the handlers and returns the recorder (see the module doc)."""
  it = Interrupts(message)
  it.prefix = prefix
  return it.install()


def flush_quietly(stream=sys.stdout) -> None:
  r"""Flushes ``stream``, ignoring a reader that went away."""
  try:
    stream.flush()
  except (BrokenPipeError, ValueError, OSError):
    pass
