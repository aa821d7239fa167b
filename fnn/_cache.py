r"""JAX's persistent compilation cache for the command line.

Most of a short ``fnn train`` is XLA compiling its programs; with the cache on,
a second run of the same configuration loads them from disk and compiles
nothing. A command that trains adds ``--no-compile-cache`` with
:func:`add_option`, and ``fnn.cli`` calls :func:`configure` with the parsed
arguments before the command runs (a command without the option is left
alone).

Where the cache lives, first match wins:

1. ``--no-compile-cache``: no persistent cache in this process, JAX's own
   configuration included (``jax_enable_compilation_cache`` is turned off).
2. JAX's own configuration is kept as it is: a cache directory JAX already has
   (``JAX_COMPILATION_CACHE_DIR``, or ``jax.config`` set by a program that
   calls ``fnn.cli.main``), or ``JAX_ENABLE_COMPILATION_CACHE=false``. fnn
   then changes neither the directory nor JAX's thresholds; the test suite
   configures its own cache this way (``tests/conftest.py``).
3. ``$FNN_COMPILE_CACHE``: a directory; ``""``, ``0``, ``off``, ``false``,
   ``no`` or ``none`` turn the cache off.
4. ``$XDG_CACHE_HOME/fnn/jax`` (an absolute ``XDG_CACHE_HOME``), else
   ``~/.cache/fnn/jax``.

fnn's own cache (3, 4) stores every program, however fast it compiled and
however small it is (``jax_persistent_cache_min_compile_time_secs`` and
``jax_persistent_cache_min_entry_size_bytes`` are 0, unless their ``JAX_``
environment variables say otherwise). The directory is created with mode
``0o700``: JAX runs what it loads from there, so it must not be writable by
others. A directory that cannot be created or written (a read-only
filesystem, a file in its place, no permission) turns the cache off for the
run with one line on stderr; training goes on. The cache is never evicted;
``rm -r ~/.cache/fnn/jax`` at any time is safe.

A cache hit is the same compiled program (JAX's key covers the computation,
the compiler options, ``XLA_FLAGS``, the devices and the jax/jaxlib
versions), so no result depends on it. JAX writes an entry in place, without
a temporary file: a process killed in the middle of that write can leave a
truncated entry, which JAX reports with a warning ("Error reading persistent
compilation cache entry") and compiles again in every later run, until the
directory is removed.

jaxlib before 0.10 logs a C++ warning ("Assume version compatibility...") for
every program it loads from a persistent cache; :func:`quiet_old_jaxlib`,
called before JAX is imported, sets ``TF_CPP_MIN_LOG_LEVEL=2`` there (unless
it is set), which also hides jaxlib's other C++ warnings (errors still show).
"""
from __future__ import annotations

import os
import sys

from fnn import _fs

OPTION = "--no-compile-cache"
ENV = "FNN_COMPILE_CACHE"
_OFF = ("", "0", "off", "false", "no", "none")
# fnn's thresholds: every program is stored.
_THRESHOLDS = {"jax_persistent_cache_min_compile_time_secs": 0,
               "jax_persistent_cache_min_entry_size_bytes": 0}


def _user_dir(var: str, leaf: str, environ=None) -> str | None:
  r"""``$var`` (``off``, ``0`` or empty: None), else
  ``$XDG_CACHE_HOME/fnn/<leaf>`` or ``~/.cache/fnn/<leaf>`` (absolute)."""
  env = os.environ if environ is None else environ
  if var in env:
    value = env[var]
    if value.strip().lower() in _OFF:
      return None
    return os.path.abspath(os.path.expanduser(value))
  base = env.get("XDG_CACHE_HOME", "")
  if not os.path.isabs(base):  # the XDG spec: a relative path is ignored
    base = os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "fnn", leaf)


def directory(environ=None) -> str | None:
  r"""fnn's cache directory (absolute), or ``None`` when ``$FNN_COMPILE_CACHE``
  turns the cache off.

  Args:
    environ: the environment (default ``os.environ``).
  """
  return _user_dir(ENV, "jax", environ)


DATA_ENV = "FNN_DATA_CACHE"


def data_directory(environ=None) -> str | None:
  r"""Where ``fnn train`` keeps generated datasets (MNIST-1D):
  ``$FNN_DATA_CACHE`` (``off``, ``0`` or empty: none), else
  ``$XDG_CACHE_HOME/fnn/data`` or ``~/.cache/fnn/data``."""
  return _user_dir(DATA_ENV, "data", environ)


def add_option(parser) -> None:
  r"""Adds ``--no-compile-cache`` (``args.compile_cache``, default True)."""
  parser.add_argument(
      OPTION, dest="compile_cache", action="store_false",
      help=f"do not use the persistent compilation cache (default: "
      f"${ENV}, else $XDG_CACHE_HOME/fnn/jax or ~/.cache/fnn/jax; a second "
      f"identical run then compiles nothing)")


def _jax_configured(jax) -> bool:
  r"""Whether JAX's own configuration already decides the cache."""
  return (bool(jax.config.jax_compilation_cache_dir)
          or not jax.config.jax_enable_compilation_cache)


def configure(args, stream=None) -> str | None:
  r"""Sets up the persistent compilation cache for the command in ``args``.

  Call it after parsing, before anything is compiled. It never raises for a
  cache directory it cannot use: it prints one warning line to ``stream``
  and leaves the cache off.

  Args:
    args: the parsed command line; a namespace without ``compile_cache``
      (a command without :func:`add_option`) is left alone.
    stream: where the warning goes (default ``sys.stderr``).

  Returns:
    The cache directory in use (fnn's or JAX's own), or ``None``.
  """
  wanted = getattr(args, "compile_cache", None)
  if wanted is None:
    return None
  import jax
  if not wanted:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if _jax_configured(jax):
    return jax.config.jax_compilation_cache_dir or None
  try:
    path = directory()
    if path is None:
      return None
    try:
      os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:  # prepare_dir says why, in one line
      pass
    _fs.prepare_dir(path)
  except ValueError as e:  # includes a NUL byte in $FNN_COMPILE_CACHE
    command = getattr(args, "command", None)
    print(f"fnn{' ' + command if command else ''}: warning: no compilation "
          f"cache for this run ({' '.join(str(e).split())}); set {ENV} to a "
          f"writable directory, or to off", file=stream or sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  for name, value in _THRESHOLDS.items():
    if name.upper() not in os.environ:
      try:
        jax.config.update(name, value)
      except (AttributeError, KeyError):  # a JAX without the option
        pass
  return path


def quiet_old_jaxlib(argv) -> None:
  r"""Before JAX is imported: hides jaxlib < 0.10's C++ warning per program
  loaded from fnn's cache by setting ``TF_CPP_MIN_LOG_LEVEL=2``.

  Does nothing when JAX is already imported, ``TF_CPP_MIN_LOG_LEVEL`` is set,
  ``argv`` holds ``--no-compile-cache``, fnn's cache is off, JAX's own
  environment configures the cache, or jaxlib is 0.10 or newer.
  """
  if ("jax" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ
      or OPTION in argv or "JAX_COMPILATION_CACHE_DIR" in os.environ
      or directory() is None):
    return
  try:
    from jaxlib import version  # the version only: no C++ is loaded
    major, minor = (int(p) for p in version.__version__.split(".")[:2])
  except (ImportError, ValueError, AttributeError):
    return
  if (major, minor) < (0, 10):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
