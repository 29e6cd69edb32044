"""`plsc-selftest` / tools/selftest.py: small real checks of every precision, attention and
parallel path this Paddle build and machine offer, printed as one table (PASS / FAIL / SKIP).

Modules: result.py (the record and tolerances), hardware.py (what the machine offers; device
peaks), config.py (the tiny training config), engine_run.py (in-process runs through the
engine's public entry points), launch.py + worker.py (the self-launched multi-device runs),
precision.py (fp32, AMP, checkpoints), scaler.py (fp16 loss scaling), attention.py (sdpa vs
math), parallel.py (data parallel, sharding), probe.py (throughput, memory planner),
runner.py (order, errors), report.py (the table).
"""
