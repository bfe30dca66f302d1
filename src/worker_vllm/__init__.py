"""A Runpod Serverless worker that serves vLLM; ARCHITECTURE.md at the repository's root maps it.

Subpackages: `startup` (everything before vLLM's engine exists), `paths` (the request paths a
job can take) and `local` (the tools that run the worker off Runpod).
"""
