"""The image the web page boots, built by the page itself under Pyodide with this code.

The page (``bootllama web``) carries bootllama's own modules (this one, runc_args, image,
checkpoint, tokenizer, errors), run.c's rotation values for its model (computed with NumPy when
the site was written; they depend on the model alone) and the two engine builds NASM
assembled then (greedy and -DSAMPLING, with their symbols), so the browser needs no NASM and the image it boots is
the one ``bootllama build`` writes for the same settings.  Imports nothing that needs NumPy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from bootllama import image
from bootllama.errors import BootllamaError
from bootllama.runc_args import atof, atoi, load_prompt, resolve_seed, resolve_temperature

ENGINES = {"greedy": (), "sampling": ("SAMPLING",)}


def engine_spec(engine: image.Engine, file: str) -> dict[str, object]:
    """What ``load_engine`` needs to rebuild an Engine: every field but its bytes (in ``file``)."""
    spec: dict[str, object] = {f.name: getattr(engine, f.name) for f in dataclasses.fields(engine) if f.name != "code"}
    spec["vars_sector"] = engine.vars_sector.hex()  # (JSON has no bytes)
    return {"file": file, **spec}


def load_engine(site: Path, spec: dict[str, object]) -> image.Engine:
    fields = {k: v for k, v in spec.items() if k not in ("file", "efi")}
    # JSON turns tuples into lists: give the fields their types back
    if "sizes" in fields:
        fields["sizes"] = [(str(n), int(s)) for n, s in fields["sizes"]]  # type: ignore[attr-defined]
    if "defines" in fields:
        fields["defines"] = tuple(fields["defines"])  # type: ignore[call-overload]
    if "vars_sector" in fields:
        fields["vars_sector"] = bytes.fromhex(str(fields["vars_sector"]))
    return image.Engine(code=(site / str(spec["file"])).read_bytes(), **fields)  # type: ignore[arg-type]


def build(site: str | os.PathLike[str], out: str | os.PathLike[str], prompt: str | None, steps: int | str,
          temperature: float | str, seed: int | str) -> dict[str, object]:
    """Build the image for these settings (as ``bootllama build`` does) from the site's files.

    Returns what the page needs to boot it: memory, progress dots, steps, prompt tokens, and the
    seed (drawn from the clock when 0, as run.c does).  Raises BootllamaError on bad input.
    """
    site = Path(site)
    meta = json.loads((site / "site.json").read_text())
    try:  # the URL's and the form's text as run.c's flags: atoi for -n and -s, atof for -t
        steps, seed = atoi(str(steps)), atoi(str(seed))
        temperature = atof(str(temperature))
    except ValueError as e:
        raise BootllamaError(str(e)) from None
    temperature = resolve_temperature(temperature)
    steps = max(0, steps)
    seed, drawn = resolve_seed(seed)
    kind = "sampling" if temperature > 0 else "greedy"
    engine = load_engine(site, meta["engines"][kind])
    checkpoint, tokenizer = site / meta["checkpoint"], site / meta["tokenizer"]
    text = load_prompt(argparse.Namespace(prompt=prompt, chat=False, system=None), checkpoint, tokenizer)
    img = image.build_image(checkpoint, tokenizer, out, prompt=text, steps=steps,
                            temperature=temperature, seed=seed, engine=engine,
                            rope=(site / meta["rope"]).read_bytes(),
                            uefi=(site / str(meta["engines"][kind]["efi"])).read_bytes())  # (as build's)
    return {"memory_mib": img.layout.memory_mib, "chunks": img.layout.chunks, "steps": img.steps,
            "prompt_tokens": len(img.prompt_ids), "seed": seed, "seed_drawn": drawn,
            "temperature": temperature}
