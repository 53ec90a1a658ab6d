"""Benchmarks of chatserver: `python -m bench` end to end over HTTP (bench/run.py), and
bench/bench_event_log.py for the event log alone. See bench/README.md."""
