"""`python -m apsis_agent`: the same as the `apsis-agent` command."""

import sys

from apsis_agent.app import main

sys.exit(main())
