"""Benchmarks: ``python -m benchmarks SUITE --dburl URL``. Not collected by pytest."""
