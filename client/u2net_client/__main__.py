"""`python -m u2net_client`: the u2net-client command line."""

import sys

from u2serve.apps.cli import main

sys.exit(main())
