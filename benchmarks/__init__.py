"""Side-by-side benchmarks against the tools a user would pick instead.

Each ``benchmarks/bench_<topic>.py`` has a ``main(argv)`` that measures, prints a table and
writes ``artifacts/benchmarks/<topic>.json``. ``python -m benchmarks`` runs them all;
``python -m benchmarks <topic> ...`` runs one (``make bench`` runs them all).
"""
