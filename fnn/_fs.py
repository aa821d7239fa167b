r"""Filesystem primitives for run directories: atomic writes, appends, locks.

Every OS fault (a full disk, a read-only filesystem, a missing permission, a
name too long, a FIFO where a file should be) becomes a one-line
``ValueError`` that names the path and what went wrong; the CLI prints it and
exits 2. Nothing here leaves a half-written file behind:

* :func:`atomic_write_bytes` writes a temporary file ``.tmp-XXXXXXXX<name>``
  in the target's directory, fsyncs it and renames it over the target. On any
  failure the temporary file is removed and the target is untouched. Only a
  ``kill -9`` between the two can leave a temporary file;
  :func:`remove_stale_temps` removes those.
* :func:`append_line` appends one line and fsyncs; a failed append is cut
  back so the file never ends in half a line.
* :class:`RunLock` holds an exclusive ``flock`` on a run directory, so two
  runs never write the same checkpoint.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile

try:
  import fcntl
except ImportError:  # not POSIX: RunLock is a no-op
  fcntl = None

_TEMP_PREFIX = ".tmp-"
# mkstemp names are prefix + 8 characters from this alphabet + suffix.
_TEMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}.*", re.DOTALL)
# Longest suffix kept in a temp name: 255 (NAME_MAX) - 5 (prefix) - 8 (random).
_MAX_SUFFIX = 242

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"))


def _kind(mode: int) -> str:
  for test, name in _KINDS:
    if test(mode):
      return name
  return "not a regular file"


def _reason(e: OSError) -> str:
  return e.strerror or str(e)


def _umask() -> int:
  r"""The process umask, read without changing it where the OS allows."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  # Fallback: set and restore. Another thread creating a file in between
  # would get mode 0o666; Linux >= 4.7 never gets here.
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _stat_or_none(path: str, action: str):
  r"""``os.stat(path)``, ``None`` when it does not exist, else ValueError."""
  try:
    return os.stat(path)
  except FileNotFoundError:
    return None
  except OSError as e:
    raise ValueError(f"cannot {action} {path}: {_reason(e)}") from None


def _fsync_dir(directory: str) -> None:
  # Makes the rename durable. Some filesystems refuse fsync on a directory;
  # the rename has happened by then, so that is not an error.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def preallocate(f, size: int) -> None:
  r"""Reserves ``size`` bytes of disk for the file ``f`` before it is written.

  For a file that :func:`atomic_write_bytes` renames over an older one: ext4
  (``auto_da_alloc``) flushes a file with delayed allocation when it replaces
  another by rename, which costs about 5 ms for a 3.6 MB checkpoint on a
  virtual disk; blocks reserved first skip it. The size is a guess; the
  caller truncates the file to what it wrote (``f.truncate()``). Best
  effort: where ``posix_fallocate`` is missing or fails (no space: the write
  reports it) nothing is reserved.
  """
  try:
    os.posix_fallocate(f.fileno(), 0, size)
  except (AttributeError, OSError, ValueError):
    pass


def check_regular_file(path: str, what: str) -> os.stat_result:
  r"""Checks that ``path`` exists and is a regular file, without opening it.

  Opening a FIFO blocks until a writer appears, and reading ``/dev/zero``
  never ends; ``os.stat`` does neither.

  Args:
    path: the file to check (symbolic links are followed).
    what: what the file is, for the message (``"checkpoint"``, ``"dataset"``).

  Returns:
    The file's ``os.stat_result``.

  Raises:
    ValueError: ``path`` does not exist, cannot be reached, or is not a
      regular file (``"checkpoint x is not a regular file (a FIFO)"``).
  """
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise ValueError(f"{what} {path} does not exist") from None
  except OSError as e:
    raise ValueError(f"cannot read {what} {path}: {_reason(e)}") from None
  if not stat.S_ISREG(st.st_mode):
    raise ValueError(f"{what} {path} is not a regular file "
                     f"({_kind(st.st_mode)})")
  return st


def atomic_write_bytes(path: str, write) -> None:
  r"""Calls ``write(fileobj)`` on a temp file, then renames it to ``path``.

  The temporary file ``.tmp-XXXXXXXX<name>`` lies in ``path``'s directory
  (a rename is atomic only within one filesystem); it is flushed and
  fsync'ed before the rename, and the directory is fsync'ed after it, so a
  crash leaves the old file or the new one, never half of one. A new file
  gets mode ``0o666 & ~umask`` (``0o644`` under umask 022); a replaced file
  keeps its mode.

  Args:
    path: the file to create or replace.
    write: ``write(f)`` writes the contents to the binary file object ``f``.

  Raises:
    ValueError: ``path`` exists and is not a regular file (a directory, a
      FIFO, ``/dev/null``), or an ``OSError`` happened (``"cannot write
      PATH: No space left on device; ..."``). The temp file is removed and
      ``path`` is left as it was.
    BaseException: whatever ``write`` raises other than ``OSError``
      (``KeyboardInterrupt`` included) propagates, after the same cleanup.
  """
  directory = os.path.dirname(os.path.abspath(path))
  old = _stat_or_none(path, "write")
  if old is not None and not stat.S_ISREG(old.st_mode):
    raise ValueError(f"cannot write {path}: it is {_kind(old.st_mode)}, not a "
                     f"regular file; it was left as is")
  mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~_umask()
  suffix = os.path.basename(path)
  if len(os.fsencode(suffix)) > _MAX_SUFFIX:
    suffix = ""
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX,
                               suffix=suffix)
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fchmod(f.fileno(), mode)
      os.fsync(f.fileno())
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    _remove_quietly(tmp)
    raise ValueError(f"cannot write {path}: {_reason(e)}; the previous file "
                     f"(if any) was left as is") from e
  except BaseException:
    _remove_quietly(tmp)
    raise
  _fsync_dir(directory)


def _remove_quietly(path) -> None:
  if path is None:
    return
  try:
    os.unlink(path)
  except OSError:
    pass


def append_line(path: str, text: str) -> None:
  r"""Appends ``text`` and a newline to ``path``, then flushes and fsyncs.

  The file is created (mode ``0o666 & ~umask``) if missing. If the write
  fails part way (a full disk) the file is cut back to its old length, so it
  never ends in half a line.

  Args:
    path: a regular file, or a path where one may be created.
    text: one line, without a newline.

  Raises:
    ValueError: ``text`` holds a newline; ``path`` is not a regular file; or
      an ``OSError`` happened (``"cannot append to PATH: ..."``).
  """
  if "\n" in text:
    raise ValueError(f"append_line writes one line; got text with a newline "
                     f"for {path}: {text[:60]!r}")
  data = (text + "\n").encode()
  try:
    # O_NONBLOCK: opening a FIFO for writing must not wait for a reader.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                 | getattr(os, "O_CLOEXEC", 0), 0o666)
  except OSError as e:
    if e.errno == errno.ENXIO:  # a FIFO with no reader
      raise ValueError(f"cannot append to {path}: it is a FIFO, not a regular "
                       f"file") from None
    raise ValueError(f"cannot append to {path}: {_reason(e)}") from None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise ValueError(f"cannot append to {path}: it is {_kind(st.st_mode)}, "
                       f"not a regular file")
    size = st.st_size
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(fd, view):]
      os.fsync(fd)
    except OSError as e:
      try:
        os.ftruncate(fd, size)
      except OSError:
        pass
      raise ValueError(f"cannot append to {path}: {_reason(e)}") from e
  finally:
    os.close(fd)


def prepare_dir(path: str) -> None:
  r"""Creates directory ``path`` (and its parents); checks it is writable.

  Writability is probed by creating, writing and removing a temporary file,
  so a read-only location is refused before any work is done (``os.access``
  would say yes to root on a read-only mount).

  Args:
    path: the directory to create or reuse.

  Raises:
    ValueError: ``path`` is empty; exists and is not a directory; lies under
      a file; is on a read-only filesystem; is too long; lacks permission;
      or the probe write fails (a full disk).
  """
  if not path:
    raise ValueError("the output directory must be a non-empty path, got ''")
  try:
    st = os.stat(path)
  except OSError:  # missing, or under a file: makedirs says which
    st = None
  if st is not None and not stat.S_ISDIR(st.st_mode):
    kind = "a file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
    raise ValueError(f"cannot create directory {path}: it exists and is "
                     f"{kind}, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    if e.errno == errno.ENOTDIR or isinstance(e, FileExistsError):
      blocker = _first_non_dir_parent(path)
      if blocker is not None:
        raise ValueError(f"cannot create directory {path}: {blocker} is a "
                         f"file, not a directory") from None
    raise ValueError(f"cannot create directory {path}: {_reason(e)}") from None
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=path, prefix=_TEMP_PREFIX, suffix="probe")
    try:
      os.write(fd, b"\0")
    finally:
      os.close(fd)
    os.unlink(tmp)
    tmp = None
  except OSError as e:
    _remove_quietly(tmp)
    raise ValueError(f"cannot write in directory {path}: "
                     f"{_reason(e)}") from None


def _first_non_dir_parent(path: str):
  r"""The nearest existing ancestor of ``path`` that is not a directory."""
  parent = os.path.abspath(path)
  while True:
    try:
      st = os.stat(parent)
    except OSError:
      st = None
    if st is not None:
      return None if stat.S_ISDIR(st.st_mode) else parent
    up = os.path.dirname(parent)
    if up == parent:
      return None
    parent = up


def remove_stale_temps(directory: str) -> list[str]:
  r"""Removes temp files that interrupted writes left in ``directory``.

  Only regular files named like this module's temporary files
  (``.tmp-`` + 8 characters of ``[a-z0-9_]`` + anything) are removed; call it
  while holding :class:`RunLock`, so no other run is writing there.

  Args:
    directory: the run directory.

  Returns:
    The names removed, sorted.

  Raises:
    ValueError: ``directory`` cannot be listed, or a temp file cannot be
      removed.
  """
  try:
    names = os.listdir(directory)
  except OSError as e:
    raise ValueError(f"cannot list directory {directory}: "
                     f"{_reason(e)}") from None
  removed = []
  for name in sorted(names):
    if not _TEMP_NAME.fullmatch(name):
      continue
    full = os.path.join(directory, name)
    try:
      if not stat.S_ISREG(os.lstat(full).st_mode):
        continue
      os.unlink(full)
    except FileNotFoundError:
      continue
    except OSError as e:
      raise ValueError(f"cannot remove stale temporary file {full}: "
                       f"{_reason(e)}") from None
    removed.append(name)
  return removed


def _lock_holder(st: os.stat_result):
  r"""The pid holding a flock on the file ``st`` describes, from /proc/locks."""
  want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
  try:
    with open("/proc/locks") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  for line in lines:
    fields = line.split()
    # "1: FLOCK  ADVISORY  WRITE 5879 fe:00:2149218 0 EOF"; a blocked
    # waiter is listed as "1: -> FLOCK ..." and is skipped.
    if len(fields) < 6 or fields[1] != "FLOCK":
      continue
    try:
      major, minor, ino = fields[5].split(":")
      if (int(major, 16), int(minor, 16), int(ino)) == want:
        pid = int(fields[4])
        return pid if pid > 0 else None
    except ValueError:
      continue
  return None


class RunLock:
  r"""An exclusive, non-blocking lock on a run directory.

  ``with RunLock(out): ...`` takes ``flock(LOCK_EX | LOCK_NB)`` on the
  directory itself (opened read-only), so no lock file appears in it. The
  lock is released on exit, and by the kernel when the process dies
  (``kill -9`` included), so a crashed run never leaves a stale lock. A
  second holder, in another process or through another ``RunLock`` in this
  one, is refused. Where ``fcntl`` does not exist (Windows) it does nothing.

  Raises:
    ValueError: on entry, ``directory`` cannot be opened or locked, or
      another run holds it (``"DIR is in use by another fnn run (pid 123)"``,
      the pid where ``/proc/locks`` tells it).
  """

  def __init__(self, directory: str):
    self.directory = directory
    self._fd = None

  def __enter__(self) -> "RunLock":
    if fcntl is None:
      return self
    if self._fd is not None:
      raise ValueError(f"RunLock on {self.directory} is already held by this "
                       f"object")
    try:
      fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                   | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
      raise ValueError(f"cannot lock run directory {self.directory}: "
                       f"{_reason(e)}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      st = os.fstat(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        pid = _lock_holder(st)
        who = "" if pid is None else f" (pid {pid})"
        if pid == os.getpid():
          who = f" (pid {pid}, this process)"
        raise ValueError(f"{self.directory} is in use by another fnn run"
                         f"{who}; wait for it to finish or choose another "
                         f"--out") from None
      raise ValueError(f"cannot lock run directory {self.directory}: "
                       f"{_reason(e)}") from None
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        fcntl.flock(fd, fcntl.LOCK_UN)
      finally:
        os.close(fd)
