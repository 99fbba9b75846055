"""The image the web page boots, built by the page itself under Pyodide with this code.

The page (``bootllama web``) carries bootllama's own modules (this one, runc_args, image,
checkpoint, tokenizer, errors), the two engine builds NASM assembled when the site was written
(greedy and -DSAMPLING, with their symbols) and the checkpoint's rotation values (which need
NumPy to compute), so the browser needs neither NASM nor NumPy and the image it boots is the
one ``bootllama build`` writes for the same settings.  The page's settings are strings, parsed
with the command line's own options (run.c's atoi and atof).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import NoReturn

from bootllama import image
from bootllama.errors import BootllamaError
from bootllama.runc_args import add_generate_arguments, load_prompt, resolve_seed, resolve_temperature

ENGINES = {"greedy": (), "sampling": ("SAMPLING",)}


def engine_spec(engine: image.Engine, file: str) -> dict[str, object]:
    """What ``load_engine`` needs to rebuild an Engine: every field but its bytes (in ``file``)."""
    spec: dict[str, object] = {f.name: getattr(engine, f.name) for f in dataclasses.fields(engine) if f.name != "code"}
    return {"file": file, **spec}


def load_engine(site: Path, spec: dict[str, object]) -> image.Engine:
    fields = {k: v for k, v in spec.items() if k != "file"}
    # JSON turns tuples into lists: give the fields their types back
    if "sizes" in fields:
        fields["sizes"] = [(str(n), int(s)) for n, s in fields["sizes"]]  # type: ignore[attr-defined]
    if "defines" in fields:
        fields["defines"] = tuple(fields["defines"])  # type: ignore[call-overload]
    return image.Engine(code=(site / str(spec["file"])).read_bytes(), **fields)  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BootllamaError(message)


def parse_settings(prompt: str | None, steps: str, temperature: str, seed: str) -> argparse.Namespace:
    """The page's fields as ``bootllama build -i PROMPT -n STEPS -t TEMP -s SEED`` reads them."""
    parser = _Parser(prog="bootllama web", add_help=False)
    add_generate_arguments(parser)
    argv = [f"-n={steps}", f"-t={temperature}", f"-s={seed}"]
    if prompt is not None:
        argv.append(f"-i={prompt}")
    return parser.parse_args(argv)


def build(site: str | os.PathLike[str], out: str | os.PathLike[str], prompt: str | None, steps: str,
          temperature: str, seed: str) -> dict[str, object]:
    """Build the image for these settings (as ``bootllama build`` does) from the site's files.

    Returns what the page needs to boot it: memory, progress dots, steps, prompt tokens, and the
    seed (drawn from the clock when 0, as run.c does).  Raises BootllamaError on bad input.
    """
    site = Path(site)
    meta = json.loads((site / "site.json").read_text())
    args = parse_settings(prompt, steps, temperature, seed)
    temperature_f = resolve_temperature(args.temperature)
    steps_n = max(0, args.steps)
    seed_n, drawn = resolve_seed(args.seed)
    kind = "sampling" if temperature_f > 0 else "greedy"
    engine = load_engine(site, meta["engines"][kind])
    checkpoint, tokenizer = site / meta["checkpoint"], site / meta["tokenizer"]
    text = load_prompt(args, checkpoint, tokenizer)
    img = image.build_image(checkpoint, tokenizer, out, prompt=text, steps=steps_n, temperature=temperature_f,
                            seed=seed_n, engine=engine, rope=(site / meta["rope"]).read_bytes())
    return {"memory_mib": img.layout.memory_mib, "chunks": img.layout.chunks, "steps": img.steps,
            "prompt_tokens": len(img.prompt_ids), "seed": seed_n, "seed_drawn": drawn,
            "temperature": temperature_f}
