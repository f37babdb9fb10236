"""``python -m medgen.train``: the ``medgen-train`` command line."""

import sys

from medgen.train.cli import main

sys.exit(main())
