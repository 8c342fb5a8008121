"""In-graph adapter training engine (pure: torch only; ComfyUI glue lives in nodes/)."""
