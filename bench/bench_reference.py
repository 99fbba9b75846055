"""How fast the NumPy reference generates: tokens per second, median of a few runs.

Two models: the packaged stories260K with tok512, and a random model of stories15M's shape
(dim 288, hidden 768, 6 layers, 6 heads, vocab 32000, seq_len 256) with Llama 2's 32k
tokenizer from ../shared/models/tokenizer.bin. Usage: python bench/bench_reference.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bootllama.checkpoint import Config, Model, load_checkpoint, packaged_path, random_model
from bootllama.reference import Reference, Sampler, clamp_steps, generate
from bootllama.tokenizer import Tokenizer

SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "models" / "tokenizer.bin"
STORIES15M = Config(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256)


def tokens_per_second(model: Model, tokenizer: Tokenizer, steps: int, runs: int) -> tuple[float, int]:
    """Median tok/s over ``runs`` greedy generations of up to ``steps`` forward passes."""
    reference = Reference(model)
    rates, passes = [], 0
    for _ in range(runs):
        printed = 0

        def count(_token: int) -> None:
            nonlocal printed
            printed += 1

        start = time.perf_counter()
        generate(reference, tokenizer, None, steps=steps, sampler=Sampler(model.config.vocab_size), on_token=count)
        elapsed = time.perf_counter() - start
        passes = min(printed + 1, clamp_steps(steps, model.config.seq_len))  # the BOS step counts too
        rates.append(passes / elapsed)
    return statistics.median(rates), passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()

    stories = load_checkpoint(packaged_path("stories260K.bin"))
    tok512 = Tokenizer.load(packaged_path("tok512.bin"), stories.config.vocab_size)
    rate, passes = tokens_per_second(stories, tok512, args.steps, args.runs)
    print(f"stories260K         : {rate:8.1f} tok/s  ({passes} tokens, median of {args.runs})")

    if not SHARED_TOKENIZER.is_file():
        print(f"stories15M-shaped   : skipped, {SHARED_TOKENIZER} is missing")
        return
    model = random_model(STORIES15M, seed=0)
    tok32k = Tokenizer.load(SHARED_TOKENIZER, STORIES15M.vocab_size)
    rate, passes = tokens_per_second(model, tok32k, args.steps, args.runs)
    print(f"stories15M-shaped   : {rate:8.1f} tok/s  ({passes} tokens, median of {args.runs})")


if __name__ == "__main__":
    main()
