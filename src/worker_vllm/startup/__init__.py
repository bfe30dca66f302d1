"""Everything that runs before vLLM's engine exists: the environment it starts from (baked model,
cache places), and work that overlaps vLLM's import (weight prefetch, the runpod SDK's CPU probe).
"""
