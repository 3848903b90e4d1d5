"""The campaign as the user writes it: its model, the file, checks, templating and paths."""
