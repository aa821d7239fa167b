import sys

from fnn.cli import main

sys.exit(main())
