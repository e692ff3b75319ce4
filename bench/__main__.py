"""`python -m bench`: run the benchmark scenarios."""

import sys

from bench.suite import main

sys.exit(main())
