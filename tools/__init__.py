"""Command-line tools (data preparation, FLOPs, benchmarks, the demo); each runs as
`python tools/NAME.py`, imports the project as an installed package and no other tool."""
