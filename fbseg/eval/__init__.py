"""The benchmarks: dataset layouts and protocols, mmseg's metric, and evaluation runs."""
