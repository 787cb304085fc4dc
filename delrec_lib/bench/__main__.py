"""``python -m delrec_lib.bench``: the benchmarks the package lists."""

import sys

from . import main

sys.exit(main())
