"""``python -m tuneloop.demo``: see ``tuneloop.demo.run``."""

import sys

from tuneloop.demo.run import main

sys.exit(main())
