"""Performance measurement behind `bench/train_step.py` and `bench/sampler.py` (importable, so the
tests run the same code the benchmarks print)."""
