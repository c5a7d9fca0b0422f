"""Helpers of keygate's real-Envoy tests and of the benchmarks (bench/*.py): Envoy on free
loopback ports (harness), the fault-injecting key service (keyserver), the real `keygate
serve` and a throwaway PostgreSQL (service), remote-key requests and waits (remote), the
load generators and their checkers (mixed_load, soak, churn), ECDS pushes (ecds), the demo
configuration (demo) and shared test data (cors_config, path_tricks).

A new integration test goes in tests/integration/test_<what it proves>.py and takes its rigs
from here; a test file is never imported by another. Logic that needs no host call is tested
natively instead (tests/core_*.rs)."""
