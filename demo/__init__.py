"""The embedded default behind README's first command (tiny generated model, adapters, data)."""
