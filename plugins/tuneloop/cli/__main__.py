"""``python -m tuneloop.cli``: the ``tuneloop`` command."""

from tuneloop.cli.main import main

raise SystemExit(main())
