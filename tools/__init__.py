"""Command-line tools (data preparation, FLOPs, benchmarks, the demo) and the synthetic-room renderer
they share; each tool runs as `python tools/NAME.py` and imports the project as an installed package."""
