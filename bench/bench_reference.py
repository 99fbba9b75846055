"""How fast the NumPy reference generates: tokens per second, median of a few runs.

Two models: the packaged stories260K with tok512, and a random model of stories15M's shape
(dim 288, hidden 768, 6 layers, 6 heads, vocab 32000, seq_len 256) with Llama 2's 32k
tokenizer from ../shared/models/tokenizer.bin. The reference alone, quickly; bench_engine.py
measures it side by side with the engine. Usage: python bench/bench_reference.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_engine import SHARED_TOKENIZER, STORIES15M, measure_reference

from bootllama.checkpoint import packaged_path, random_model, write_legacy


def report(name: str, checkpoint: Path, tokenizer: Path, steps: int, runs: int) -> None:
    rates, passes, _ = measure_reference(checkpoint, tokenizer, steps, runs)
    print(f"{name:<20}: {statistics.median(rates):8.1f} tok/s  ({passes} tokens, median of {runs})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()

    report("stories260K", packaged_path("stories260K.bin"), packaged_path("tok512.bin"), args.steps, args.runs)
    if not SHARED_TOKENIZER.is_file():
        print(f"{'stories15M-shaped':<20}: skipped, {SHARED_TOKENIZER} is missing")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "m15.bin")
        write_legacy(random_model(STORIES15M, seed=0), path)
        report("stories15M-shaped", path, SHARED_TOKENIZER, args.steps, args.runs)


if __name__ == "__main__":
    main()
