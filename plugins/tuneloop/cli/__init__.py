"""The ``tuneloop`` command line."""
