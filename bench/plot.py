"""Draws a results file from bench/results/ as a PNG: output tokens/s and TTFT p50 per path, for
each run at 256 and 32 concurrent requests (a path a run left out has no bar).

  python bench/plot.py bench/results/2026-11-23-h100.json docs/benchmarks.png
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PATHS = {"a_direct": "(a) AsyncLLM", "b_native": "(b) handler, native", "c_openai": "(c) handler, OpenAI",
         "d_vllm_serve_proxy": "(d) vllm serve + proxy"}
RUNS = ["run_1", "run_2", "run_3", "run_4", "run_5"]
LABELS = {"run_3": "run 3 (STREAM_INTERVAL=4)", "run_4": "run 4 (STREAM_INTERVAL=4)",
          "run_5": "run 5 (STREAM_INTERVAL=4, (b) first)"}


def main(results_path: Path, png: Path) -> None:
    results = json.loads(results_path.read_text())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [("256", "output_tok_per_s", "output tokens/s, 256 concurrent"),
              ("32", "output_tok_per_s", "output tokens/s, 32 concurrent"),
              ("256", "ttft_ms_p50", "TTFT p50 (ms), 256 concurrent")]
    width = 0.8 / len(RUNS)
    for ax, (concurrency, metric, title) in zip(axes, panels, strict=False):
        for i, run in enumerate(RUNS):
            measured = results["throughput"][run].get(concurrency, {})
            ran = [(k, measured[path][metric]) for k, path in enumerate(PATHS) if path in measured]
            xs = [k + (i - (len(RUNS) - 1) / 2) * width for k, _ in ran]
            bars = ax.bar(xs, [value for _, value in ran], width, label=LABELS.get(run, run.replace("_", " ")))
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        labels = [label.replace(", ", ",\n").replace(" + ", "\n+ ") for label in PATHS.values()]
        ax.set_xticks(range(len(PATHS)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[2].legend(fontsize=8, loc="upper left")
    workload = results["workload"]
    fig.suptitle(f"{results['gpu'].split(',')[0]}, vLLM {results['vllm']}, {results['model'].split(' (')[0]}: "
                 f"{workload['prompt_tokens']} prompt / {workload['output_tokens']} output tokens "
                 "((d) ran once; runs 3 to 5 are the worker's default since)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
