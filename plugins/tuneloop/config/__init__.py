"""The campaign as the user writes it: its model, the file, checks, templating, paths and the
job backend's settings."""
