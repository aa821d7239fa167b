"""Checkpoints and the filesystem primitives under them (fnn._fs)."""
import contextlib
import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest

import fnn
from fnn import _fs, checkpoint, train

FS_PATH = os.path.abspath(_fs.__file__)


N_LEAVES = 15  # adamw: 4 params, 4 mu, 4 nu, its count, step, key


def _state(hidden=4):
  model = fnn.MLP((3, hidden, 2))
  opt = train.make_optimizer("adamw", 1e-3)
  return train.init_state(model, opt, jax.random.key(0))


def _leaves(state):
  return jax.tree.leaves(state._replace(key=jax.random.key_data(state.key)))


def _temps(directory):
  return sorted(p.name for p in directory.iterdir()
                if p.name.startswith(".tmp-"))


def _rewrite(path, edit):
  r"""Rewrites the npz at ``path`` after ``edit(header, arrays)``."""
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  header = json.loads(str(arrays["header"]))
  edit(header, arrays)
  arrays["header"] = np.array(json.dumps(header))
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _save_format_1(path, state, config):
  r"""What fnn wrote before format 2: the digest covers the arrays only."""
  leaves = [np.asarray(a) for a in _leaves(state)]
  h = hashlib.sha256()
  for a in leaves:
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  header = dict(format="fnn-checkpoint-1", config=config,
                num_leaves=len(leaves), shapes=[list(a.shape) for a in leaves],
                dtypes=[str(a.dtype) for a in leaves], sha256=h.hexdigest())
  arrays = {f"leaf_{i:04d}": a for i, a in enumerate(leaves)}
  arrays["header"] = np.array(json.dumps(header))
  with open(path, "wb") as f:
    np.savez(f, **arrays)


@contextlib.contextmanager
def _deadline(seconds):
  r"""Fails (instead of hanging) when the block runs past ``seconds``."""
  def expire(signum, frame):
    del signum, frame
    raise TimeoutError(f"blocked for more than {seconds} s")
  old = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _umask(mask):
  old = os.umask(mask)
  try:
    yield
  finally:
    os.umask(old)


def _raise(code):
  def fail(*args, **kwargs):
    del args, kwargs
    raise OSError(code, os.strerror(code))
  return fail


# --- checkpoints -------------------------------------------------------------


def test_round_trip_with_config_and_meta(tmp_path):
  state = _state()
  path = str(tmp_path / "c.npz")
  config = {"lr": 1e-3, "hidden": (4,), "dataset": "xor"}
  meta = {"epoch": 3, "data": "sha256:ab12"}
  checkpoint.save(path, state, config, meta)
  loaded, got = checkpoint.load(path, state)
  assert got == {"lr": 1e-3, "hidden": [4], "dataset": "xor"}  # as JSON reads
  chex.assert_trees_all_equal(_leaves(loaded), _leaves(state))
  assert checkpoint.read_header(path) == dict(
      format="fnn-checkpoint-2", config=got, meta=meta)
  assert checkpoint.read_config(path) == got
  loaded, header = checkpoint.load_with_header(path, state)
  assert header["meta"] == meta
  assert jax.random.key_impl(loaded.key) == jax.random.key_impl(state.key)
  checkpoint.save(path, state, {})  # meta defaults to {}
  assert checkpoint.read_header(path)["meta"] == {}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def _sequential_state(spec, n_in=40, n_out=10, seed=0):
  """A TrainState of any network, its params drawn with NumPy in the model's
  shapes (no init to compile)."""
  from fnn import arch
  model = arch.build(spec, n_in, n_out)
  rng = np.random.default_rng(seed)
  is_shape = lambda t: isinstance(t, tuple) and len(t) > 0 and all(
      isinstance(n, int) for n in t)
  params = jax.tree.map(
      lambda shape: jax.numpy.asarray(rng.normal(size=shape), np.float32),
      model.param_shapes, is_leaf=is_shape)
  opt = train.make_optimizer("adamw", 1e-3)
  return train.TrainState(params, opt.init(params),
                          jax.numpy.asarray(7, np.int32), jax.random.key(seed))


def test_any_network_round_trips(tmp_path):
  """A Sequential's params: ConvParams, LayerNormParams, () entries of
  parameterless layers, a residual block's nested tuple (and AdamW's state
  of the same structure) save and load with their types."""
  from fnn import layers as L
  spec = "conv1d:2:3,relu,layernorm,flatten,res(dense:76,tanh),dense:10"
  state = _sequential_state(spec)
  path = str(tmp_path / "seq.npz")
  checkpoint.save(path, state, {"arch": spec}, {"epoch": 1})
  loaded, config = checkpoint.load(path, _sequential_state(spec, seed=1))
  assert config == {"arch": spec}
  assert jax.tree.structure(loaded) == jax.tree.structure(state)
  chex.assert_trees_all_equal(_leaves(loaded), _leaves(state))
  p = loaded.params
  assert isinstance(p[0], L.ConvParams) and p[1] == () and p[3] == ()
  assert isinstance(p[2], L.LayerNormParams)
  assert isinstance(p[4], tuple) and isinstance(p[4][0], fnn.Dense)
  assert p[4][1] == ()
  # Another network is refused, by count or by shape.
  with pytest.raises(ValueError, match=r"has 27 arrays, this run's state has "
                     r"15: it belongs to another model"):
    checkpoint.load(path, _state())
  other = _sequential_state(spec.replace("conv1d:2:3", "conv1d:2:5").replace(
      "dense:76", "dense:72"))
  with pytest.raises(ValueError, match=r"array 0 is float32\[3, 1, 2\], this "
                     r"run expects float32\[5, 1, 2\]"):
    checkpoint.load(path, other)


def test_save_refuses_a_config_that_is_not_json(tmp_path):
  with pytest.raises(TypeError, match=r"checkpoint config must be JSON-able"):
    checkpoint.save(str(tmp_path / "c.npz"), _state(), {"f": object()})
  with pytest.raises(TypeError, match=r"checkpoint meta must be a dict, got "
                     r"list"):
    checkpoint.save(str(tmp_path / "c.npz"), _state(), {}, [1])
  assert not list(tmp_path.iterdir())


EDITS = [
    ("config", lambda h: h["config"].update(lr=0.5)),
    ("meta", lambda h: h["meta"].update(epoch=99)),
    ("extra-key", lambda h: h.update(note="hello")),
]


@pytest.mark.parametrize("edit", [e for _, e in EDITS],
                         ids=[n for n, _ in EDITS])
def test_edited_header_is_refused_as_corrupted(tmp_path, edit):
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, _state(), {"lr": 1e-3}, {"epoch": 1})
  _rewrite(path, lambda h, a: edit(h))
  blob = open(path, "rb").read()
  for read in (checkpoint.read_header, checkpoint.read_config,
               lambda p: checkpoint.load(p, _state())):
    with pytest.raises(ValueError, match=r"is corrupted: checksum mismatch "
                       r"\(the arrays or the header \(config, meta\)"):
      read(path)
  assert open(path, "rb").read() == blob


@pytest.mark.parametrize("key", ["sha256", "config", "num_leaves", "shapes",
                                 "dtypes", "meta", "format"])
def test_header_lacking_a_field_is_refused(tmp_path, key):
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, _state(), {"lr": 1e-3})
  _rewrite(path, lambda h, a: h.pop(key))
  with pytest.raises(ValueError, match=rf"^checkpoint {path} is corrupted: "
                     rf"header lacks '{key}'"):
    checkpoint.load(path, _state())


@pytest.mark.parametrize("key", ["sha256", "config", "num_leaves", "shapes",
                                 "dtypes"])
def test_format_1_header_lacking_a_field_is_refused(tmp_path, key):
  path = str(tmp_path / "c.npz")
  _save_format_1(path, _state(), {"lr": 1e-3})
  _rewrite(path, lambda h, a: h.pop(key))
  with pytest.raises(ValueError, match=rf"is corrupted: header lacks '{key}'"):
    checkpoint.read_config(path)


WRONG = [
    ("config-list", lambda h: h.update(config=[1]),
     r"header 'config' is a list, expected a dict"),
    ("meta-str", lambda h: h.update(meta="x"),
     r"header 'meta' is a str, expected a dict"),
    ("num-leaves-str", lambda h: h.update(num_leaves="7"),
     r"header 'num_leaves' is a str, expected a int"),
    ("num-leaves-bool", lambda h: h.update(num_leaves=True),
     r"header 'num_leaves' is a bool"),
    ("sha-short", lambda h: h.update(sha256="abc"),
     r"header 'sha256' is 'abc', expected 64 hex digits"),
    ("shape-str", lambda h: h["shapes"].__setitem__(0, ["3", 4]),
     r"header shape 0 is \['3', 4\]"),
    ("dtype-int", lambda h: h["dtypes"].__setitem__(0, 4),
     r"header dtype 0 is 4, expected a string"),
    ("format", lambda h: h.update(format="fnn-checkpoint-9"),
     r"header has format 'fnn-checkpoint-9', expected 'fnn-checkpoint-2'"),
    ("not-object", lambda h: (h.clear(), h.update(x=1)),
     r"header lacks 'format'"),
    ("num-leaves-huge", lambda h: h.update(num_leaves=10**9),
     r"header lists 15 shapes for 1000000000 arrays"),
]


@pytest.mark.parametrize("edit,message", [(e, m) for _, e, m in WRONG],
                         ids=[n for n, _, _ in WRONG])
def test_header_with_wrong_types_is_refused(tmp_path, edit, message):
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, _state(), {"lr": 1e-3})
  _rewrite(path, lambda h, a: edit(h))
  with _deadline(30), pytest.raises(ValueError, match=message):
    checkpoint.load(path, _state())


def test_header_and_arrays_must_agree(tmp_path):
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, _state(), {})
  # num_leaves, shapes and dtypes consistent, but far more than the file has.
  def inflate(h, a):
    del a
    n = 10**5
    h.update(num_leaves=n, shapes=[[1]] * n, dtypes=["int32"] * n)
  _rewrite(path, inflate)
  with _deadline(30), pytest.raises(ValueError, match=r"header lists 100000 "
                                    r"arrays, the file holds 15"):
    checkpoint.read_header(path)

  checkpoint.save(path, _state(), {})  # a leaf replaced by another shape
  _rewrite(path, lambda h, a: a.update(
      leaf_0000=np.zeros((4, 3), np.float32)))
  with pytest.raises(ValueError, match=r"corrupted: array 0 is float32\[4, 3\]"
                     r", its header says float32\[3, 4\]"):
    checkpoint.load(path, _state())

  checkpoint.save(path, _state(), {})  # a leaf missing
  _rewrite(path, lambda h, a: a.pop("leaf_0014"))
  with pytest.raises(ValueError, match=r"header lists 15 arrays, the file "
                     r"holds 14"):
    checkpoint.load(path, _state())


def test_damaged_npy_shape_does_not_allocate(tmp_path):
  r"""A leaf whose npy header (and the checkpoint header) claim 4 TB."""
  path = tmp_path / "c.npz"
  checkpoint.save(str(path), _state(), {})
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  header = json.loads(str(arrays["header"]))
  header["shapes"][0] = [10**12]
  arrays["header"] = np.array(json.dumps(header))
  import io
  import zipfile
  with zipfile.ZipFile(path, "w") as z:
    for name, a in arrays.items():
      buf = io.BytesIO()
      if name == "leaf_0000":
        np.lib.format.write_array_header_1_0(
            buf, dict(descr="<f4", fortran_order=False, shape=(10**12,)))
        buf.write(b"\0" * 48)
      else:
        np.lib.format.write_array(buf, a, allow_pickle=False)
      z.writestr(name + ".npy", buf.getvalue())
  with pytest.raises(ValueError, match=r"array 0 needs 4000000000000 bytes, "
                     r"its member holds \d+"):
    checkpoint.read_header(str(path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_file_is_refused_and_kept(tmp_path, damage):
  path = tmp_path / "c.npz"
  checkpoint.save(str(path), _state(), {})
  blob = {"truncate": path.read_bytes()[:-100], "garbage": b"not a zip",
          "empty": b""}[damage]
  path.write_bytes(blob)
  with pytest.raises(ValueError, match=r"corrupted"):
    checkpoint.read_header(str(path))
  assert path.read_bytes() == blob


def test_fifo_as_checkpoint_is_refused_at_once(tmp_path):
  fifo = str(tmp_path / "c.npz")
  os.mkfifo(fifo)
  with _deadline(10):
    for read in (checkpoint.read_header, checkpoint.read_config,
                 lambda p: checkpoint.load(p, _state())):
      with pytest.raises(ValueError, match=rf"^checkpoint {fifo} is not a "
                         r"regular file \(a FIFO\)$"):
        read(fifo)
  with pytest.raises(ValueError, match=r"is not a regular file \(a "
                     r"directory\)"):
    checkpoint.read_header(str(tmp_path))
  with pytest.raises(ValueError, match=r"checkpoint .*nope.npz does not exist"):
    checkpoint.read_header(str(tmp_path / "nope.npz"))


def test_format_1_file_still_loads(tmp_path):
  state = _state()
  path = str(tmp_path / "old.npz")
  _save_format_1(path, state, {"lr": 0.01})
  loaded, config = checkpoint.load(path, state)
  assert config == {"lr": 0.01}
  chex.assert_trees_all_equal(_leaves(loaded), _leaves(state))
  assert checkpoint.read_header(path) == dict(
      format="fnn-checkpoint-1", config={"lr": 0.01}, meta={})
  # Its digest still covers the arrays.
  _rewrite(path, lambda h, a: a.update(leaf_0000=a["leaf_0000"] + 1))
  with pytest.raises(ValueError, match=r"checksum mismatch \(the arrays were "
                     r"changed\)"):
    checkpoint.load(path, state)


@pytest.mark.parametrize("fault", ["fsync-ENOSPC", "replace-EROFS",
                                   "write-ENOSPC", "mkstemp-EACCES"])
def test_save_on_full_or_read_only_disk_keeps_the_old_checkpoint(
    tmp_path, monkeypatch, fault):
  old, new = _state(), _state()._replace(step=jax.numpy.asarray(5))
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, old, {"lr": 1}, {"epoch": 1})
  name, code = fault.split("-")
  code = getattr(errno, code)
  if name == "fsync":
    monkeypatch.setattr(os, "fsync", _raise(code))
  elif name == "replace":
    monkeypatch.setattr(os, "replace", _raise(code))
  elif name == "write":
    monkeypatch.setattr(np, "savez", _raise(code))
  else:
    monkeypatch.setattr(_fs.tempfile, "mkstemp", _raise(code))
  with pytest.raises(ValueError, match=rf"^cannot write {path}: "
                     rf"{os.strerror(code)}; the previous file"):
    checkpoint.save(path, new, {"lr": 2}, {"epoch": 2})
  monkeypatch.undo()
  loaded, config = checkpoint.load(path, old)
  assert config == {"lr": 1} and int(loaded.step) == 0
  assert _temps(tmp_path) == []


def test_save_into_a_missing_directory_or_over_a_directory(tmp_path):
  with pytest.raises(ValueError, match=r"cannot write .*/no/c.npz: No such "
                     r"file or directory"):
    checkpoint.save(str(tmp_path / "no" / "c.npz"), _state(), {})
  (tmp_path / "d").mkdir()
  with pytest.raises(ValueError, match=r"cannot write .*/d: it is a "
                     r"directory, not a regular file"):
    checkpoint.save(str(tmp_path / "d"), _state(), {})


def test_checkpoint_mode_follows_the_umask(tmp_path):
  path = tmp_path / "c.npz"
  with _umask(0o022):
    checkpoint.save(str(path), _state(), {})
  assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_atomic_write_bytes_is_re_exported():
  assert checkpoint.atomic_write_bytes is _fs.atomic_write_bytes


# --- fnn._fs -----------------------------------------------------------------


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600),
                                       (0o002, 0o664)])
@pytest.mark.parametrize("proc", [True, False], ids=["proc", "fallback"])
def test_new_files_follow_the_umask(tmp_path, monkeypatch, mask, mode, proc):
  if not proc:  # no /proc: the set-and-restore fallback
    monkeypatch.setattr(_fs, "open", _raise(errno.ENOENT), raising=False)
  with _umask(mask):
    _fs.atomic_write_bytes(str(tmp_path / "a"), lambda f: f.write(b"x"))
    if proc:
      _fs.append_line(str(tmp_path / "b"), "x")
    assert os.umask(mask) == mask  # left as it was
  assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == mode
  if proc:
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == mode


def test_replaced_file_keeps_its_mode(tmp_path):
  path = tmp_path / "a"
  path.write_bytes(b"old")
  path.chmod(0o640)
  with _umask(0o022):
    _fs.atomic_write_bytes(str(path), lambda f: f.write(b"new"))
  assert path.read_bytes() == b"new"
  assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_write_interrupted_leaves_target_and_no_temp(tmp_path):
  path = tmp_path / "a"
  path.write_bytes(b"old")

  def interrupted(f):
    f.write(b"half")
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    _fs.atomic_write_bytes(str(path), interrupted)

  def full(f):
    f.write(b"half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  with pytest.raises(ValueError, match=r"cannot write .*: No space left on "
                     r"device; the previous file \(if any\) was left as is$"):
    _fs.atomic_write_bytes(str(path), full)
  assert path.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_atomic_write_refuses_targets_that_are_not_regular_files(tmp_path):
  fifo = tmp_path / "fifo"
  os.mkfifo(fifo)
  with _deadline(10):
    with pytest.raises(ValueError, match=r"fifo: it is a FIFO, not a regular "
                       r"file; it was left as is"):
      _fs.atomic_write_bytes(str(fifo), lambda f: f.write(b"x"))
  assert stat.S_ISFIFO(os.stat(fifo).st_mode)
  with pytest.raises(ValueError, match=r"/dev/null: it is a character device"):
    _fs.atomic_write_bytes("/dev/null", lambda f: f.write(b"x"))
  (tmp_path / "f").write_bytes(b"")
  with pytest.raises(ValueError, match=r"cannot write .*/f/x: Not a "
                     r"directory"):
    _fs.atomic_write_bytes(str(tmp_path / "f" / "x"), lambda f: f.write(b"x"))
  with pytest.raises(ValueError, match=r"cannot write .*: File name too long"):
    _fs.atomic_write_bytes(str(tmp_path / ("n" * 300)),
                           lambda f: f.write(b"x"))
  assert _temps(tmp_path) == []


def test_atomic_write_with_a_long_name_that_fits(tmp_path):
  path = tmp_path / ("n" * 250)  # the temp name drops the suffix to fit
  _fs.atomic_write_bytes(str(path), lambda f: f.write(b"x"))
  assert path.read_bytes() == b"x" and _temps(tmp_path) == []


def test_append_line(tmp_path, monkeypatch):
  path = tmp_path / "m.jsonl"
  _fs.append_line(str(path), '{"epoch": 1}')
  _fs.append_line(str(path), '{"epoch": 2}')
  assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
  with pytest.raises(ValueError, match=r"one line; got text with a newline"):
    _fs.append_line(str(path), "a\nb")

  real_write = os.write

  def half_then_full(fd, data):  # a full disk after half a line
    real_write(fd, bytes(data[:3]))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "write", half_then_full)
  with pytest.raises(ValueError, match=r"cannot append to .*m.jsonl: No space "
                     r"left on device$"):
    _fs.append_line(str(path), '{"epoch": 3}')
  monkeypatch.undo()
  assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'  # cut back

  fifo = tmp_path / "fifo"
  os.mkfifo(fifo)
  with _deadline(10), pytest.raises(ValueError, match=r"cannot append to "
                                    r".*fifo: it is a FIFO"):
    _fs.append_line(str(fifo), "x")
  with pytest.raises(ValueError, match=r"cannot append to .*: Is a directory"):
    _fs.append_line(str(tmp_path), "x")
  with pytest.raises(ValueError, match=r"cannot append to .*/no/m: No such "
                     r"file"):
    _fs.append_line(str(tmp_path / "no" / "m"), "x")


def test_append_line_refuses_a_fifo_that_has_a_reader(tmp_path):
  fifo = str(tmp_path / "fifo")
  os.mkfifo(fifo)
  reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
  try:
    with _deadline(10), pytest.raises(ValueError, match=r"it is a FIFO, not "
                                      r"a regular file"):
      _fs.append_line(fifo, "x")
    assert os.read(reader, 10) == b""  # nothing was written into it
  finally:
    os.close(reader)


def test_check_regular_file(tmp_path):
  (tmp_path / "f").write_bytes(b"abc")
  assert _fs.check_regular_file(str(tmp_path / "f"), "dataset").st_size == 3
  os.mkfifo(tmp_path / "fifo")
  cases = [(tmp_path / "fifo", r"dataset .*fifo is not a regular file "
            r"\(a FIFO\)$"),
           (tmp_path, r"is not a regular file \(a directory\)$"),
           ("/dev/null", r"dataset /dev/null is not a regular file \(a "
            r"character device\)$"),
           (tmp_path / "none", r"dataset .*none does not exist$"),
           (tmp_path / "f" / "x", r"cannot read dataset .*/f/x: Not a "
            r"directory$")]
  for path, message in cases:
    with pytest.raises(ValueError, match=message):
      _fs.check_regular_file(str(path), "dataset")


def test_prepare_dir(tmp_path, monkeypatch):
  out = tmp_path / "a" / "b" / "run"
  _fs.prepare_dir(str(out))
  _fs.prepare_dir(str(out))  # an existing directory is fine
  assert out.is_dir() and list(out.iterdir()) == []  # the probe is gone

  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"cannot create directory .*/file: it "
                     r"exists and is a file, not a directory$"):
    _fs.prepare_dir(str(tmp_path / "file"))
  for under in ("file/run", "file/a/b/run"):
    with pytest.raises(ValueError, match=rf"cannot create directory "
                       rf".*/{under}: .*/file is a file, not a directory$"):
      _fs.prepare_dir(str(tmp_path / under))
  with pytest.raises(ValueError, match=r"cannot create directory .*: File name "
                     r"too long$"):
    _fs.prepare_dir(str(tmp_path / ("n" * 300)))
  with pytest.raises(ValueError, match=r"must be a non-empty path"):
    _fs.prepare_dir("")

  monkeypatch.setattr(os, "mkdir", _raise(errno.EROFS))
  with pytest.raises(ValueError, match=r"cannot create directory .*/new: "
                     r"Read-only file system$"):
    _fs.prepare_dir(str(tmp_path / "new"))
  monkeypatch.undo()
  # An existing directory on a read-only filesystem: the probe write fails.
  monkeypatch.setattr(_fs.tempfile, "mkstemp", _raise(errno.EROFS))
  with pytest.raises(ValueError, match=r"cannot write in directory .*/run: "
                     r"Read-only file system$"):
    _fs.prepare_dir(str(out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through 0555")
def test_prepare_dir_refuses_a_read_only_directory(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    with pytest.raises(ValueError, match=r"cannot write in directory .*/ro: "
                       r"Permission denied$"):
      _fs.prepare_dir(str(ro))
    with pytest.raises(ValueError, match=r"cannot create directory .*/ro/x: "
                       r"Permission denied$"):
      _fs.prepare_dir(str(ro / "x"))
  finally:
    ro.chmod(0o755)


def test_remove_stale_temps(tmp_path):
  keep = ["checkpoint.npz", ".tmp-ab", "tmp-abcd1234x", ".tmp-ABCD1234x",
          ".tmp_abcd1234x", "x.tmp-abcd1234"]
  stale = [".tmp-abcd_234checkpoint.npz", ".tmp-zzzzzzzz", ".tmp-0a1b2c3dprobe"]
  for name in keep + stale:
    (tmp_path / name).write_bytes(b"")
  (tmp_path / ".tmp-abcd1234dir").mkdir()  # not a regular file: kept
  assert _fs.remove_stale_temps(str(tmp_path)) == sorted(stale)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      keep + [".tmp-abcd1234dir"])
  with pytest.raises(ValueError, match=r"cannot list directory .*/none: No "
                     r"such file"):
    _fs.remove_stale_temps(str(tmp_path / "none"))


def _python(code, **kwargs):
  r"""Runs ``code`` in a new interpreter with fnn/_fs.py loaded as ``fs``."""
  prelude = textwrap.dedent(f"""
      import importlib.util, os, sys
      spec = importlib.util.spec_from_file_location("fs", {FS_PATH!r})
      fs = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(fs)
  """)
  return subprocess.Popen([sys.executable, "-c", prelude + code], **kwargs)


def test_temp_left_by_kill_9_is_removed(tmp_path):
  path = tmp_path / "checkpoint.npz"
  path.write_bytes(b"old")
  proc = _python(f"""
def write(f):
  f.write(b"new, half")
  f.flush()
  os.kill(os.getpid(), 9)
fs.atomic_write_bytes({str(path)!r}, write)
""")
  assert proc.wait(timeout=60) == -signal.SIGKILL
  left = _temps(tmp_path)
  assert len(left) == 1 and left[0].endswith("checkpoint.npz")
  assert path.read_bytes() == b"old"
  assert _fs.remove_stale_temps(str(tmp_path)) == left
  assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_run_lock_refuses_a_second_process(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "checkpoint.npz").write_bytes(b"x")
  holder = _python(f"""
lock = fs.RunLock({str(run)!r}).__enter__()
print("locked", flush=True)
sys.stdin.read()
""", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == b"locked\n"
    with pytest.raises(ValueError, match=rf"^{run} is in use by another fnn "
                       rf"run \(pid {holder.pid}\); wait for it"):
      with _fs.RunLock(str(run)):
        pass
    holder.stdin.close()  # the holder exits: the kernel releases its lock
    assert holder.wait(timeout=60) == 0
  finally:
    holder.kill()
  with _fs.RunLock(str(run)):
    pass
  assert [p.name for p in run.iterdir()] == ["checkpoint.npz"]  # no lock file


def test_run_lock_is_released_when_the_holder_is_killed(tmp_path):
  holder = _python(f"""
fs.RunLock({str(tmp_path)!r}).__enter__()
print("locked", flush=True)
sys.stdin.read()
""", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == b"locked\n"
    with pytest.raises(ValueError, match=r"in use by another fnn run"):
      _fs.RunLock(str(tmp_path)).__enter__()
  finally:
    holder.kill()
    holder.wait(timeout=60)
  with _fs.RunLock(str(tmp_path)):
    pass


def test_run_lock_in_one_process(tmp_path):
  lock = _fs.RunLock(str(tmp_path))
  with lock:
    with pytest.raises(ValueError, match=rf"in use by another fnn run \(pid "
                       rf"{os.getpid()}, this process\)"):
      with _fs.RunLock(str(tmp_path)):
        pass
  with lock:  # released on exit, reusable
    pass
  with pytest.raises(ValueError, match=r"cannot lock run directory .*/none: "
                     r"No such file"):
    _fs.RunLock(str(tmp_path / "none")).__enter__()
  (tmp_path / "f").write_bytes(b"")
  with pytest.raises(ValueError, match=r"cannot lock run directory .*/f: Not "
                     r"a directory"):
    _fs.RunLock(str(tmp_path / "f")).__enter__()
  assert [p.name for p in tmp_path.iterdir()] == ["f"]
