"""Command-line tools: each `<tool>.py` has a main(); tools/<tool>.py and console scripts call it."""
