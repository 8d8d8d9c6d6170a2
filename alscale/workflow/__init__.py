"""The labelling workflow around the engine: export a selection, import labels."""
