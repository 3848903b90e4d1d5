"""Property-based fuzzing of what users hand to tuneloop: campaigns, recipes, datasets, options."""
