"""herd's benchmarks: each measures its ratio side by side in one run. `python -m bench NAME`."""
