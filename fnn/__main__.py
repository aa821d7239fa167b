r"""``python -m fnn``: the ``fnn`` command.

``python -m`` puts the working directory first on ``sys.path``, so a
``matplotlib.py`` lying there would run when fnn imports matplotlib. fnn is
already imported (this file is inside it) and its submodules are found
through ``fnn.__path__``, so the entry is removed before anything else is
imported; ``--import`` adds the working directory back while it imports the
modules it names.
"""
import os
import sys

if __name__ == "__main__" and sys.path and not sys.flags.safe_path and (
    sys.path[0] in ("", os.getcwd())):
  del sys.path[0]

from fnn.cli import main  # noqa: E402 (after sys.path is cleaned)

if __name__ == "__main__":
  sys.exit(main())
