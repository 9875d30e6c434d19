"""``shufflenet-bench`` (``python -m shufflenet_ops.bench``): theoretical vs
measured speedup, op and model benchmarks, tables and plots."""
