"""The worker off Runpod: one `--test_input` job, a local endpoint with Runpod's HTTP shapes,
and a fake Runpod job API for tests and benchmarks."""
