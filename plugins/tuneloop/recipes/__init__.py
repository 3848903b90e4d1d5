"""Nova recipes: the catalog, typed recipe models, contextual rules, rendering and preflight."""
