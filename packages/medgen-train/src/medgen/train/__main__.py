import sys

from medgen.train.cli import main

sys.exit(main())
