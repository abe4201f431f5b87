"""Optional integrations with training frameworks; each module imports its framework, ``layerwise`` never does."""
