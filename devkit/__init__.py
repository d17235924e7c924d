"""Development tools for the tests, the demo and the benchmarks; never installed."""
