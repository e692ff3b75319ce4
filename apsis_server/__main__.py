"""`python -m apsis_server`: the same as `apsis-server`."""

import sys

from apsis_server.app import main

sys.exit(main())
