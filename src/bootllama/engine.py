"""``bootllama build`` and ``bootllama run``: the boot-sector engine's commands."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from bootllama import image, pcs
from bootllama.checkpoint import atomic_write, is_special, read_legacy_config, refuse_inputs, write_into
from bootllama.errors import BootllamaError
from bootllama.interrupts import deferred, remove, temp_dir
from bootllama.pcs import qemu
from bootllama.runc_args import (
    TYPED,
    add_generate_arguments,
    check_mode,
    is_top_p,
    load_prompt,
    resolve_paths,
    resolve_seed,
    resolve_temperature,
    resolve_topp,
)
from bootllama.talkblock import Talk
from bootllama.tokenizer import Tokenizer

# --cpu NAME -> the engine's NASM defines, and the QEMU CPU model `run` gives that build
CPUS = {"sse2": (), "486": ("CPU486",)}
QEMU_CPU = {"sse2": None, "486": "486"}

# run's default timeout: generous bounds on TCG's pace on a slow, shared machine (the 110M shape:
# about 0.15 s per MB to load and 1.4 s per token for 419 MB of weights; SmolLM2's 538 MB: ~0.5 tok/s)
BASE_TIMEOUT = 600.0
LOAD_S_PER_MB = 0.5
STEP_S_PER_MB = 0.02


INTERACTIVE_TIMEOUT = 7 * 24 * 3600.0  # `run -m chat` at a terminal: no bound but --timeout's


def default_timeout(data_bytes: int, steps: int) -> float:
    """Seconds `run` waits by default: 600, plus time to load ``data_bytes`` and run ``steps``
    forward passes over them, each about four times what TCG takes here."""
    mb = data_bytes / 1e6
    return BASE_TIMEOUT + mb * (LOAD_S_PER_MB + STEP_S_PER_MB * steps)


def _check_settings(args: argparse.Namespace) -> None:
    args.temperature = resolve_temperature(args.temperature)
    args.topp = resolve_topp(args.topp)
    if args.steps < 0:
        args.steps = 0


def talk_of(args: argparse.Namespace) -> Talk | None:
    """What the image does with typed input: -m chat (-y, -i the first turn), or -i - (the story machine)."""
    check_mode(args)
    if args.mode == "chat":
        system = os.fsencode(args.system) if args.system is not None else None
        first = os.fsencode(args.prompt) if args.prompt not in (None, TYPED) else None
        return Talk("chat", system, first)
    if args.prompt == TYPED:
        return Talk("story")
    return None


def _build(args: argparse.Namespace, out: str | os.PathLike[str], keep: str | None = None) -> image.Image:
    """Build the image for ``args`` at ``out``; with ``keep``, also publish it there (run's
    --image). Both paths are checked against the inputs before anything is built."""
    _check_settings(args)
    if getattr(args, "floor", False):
        if any((args.checkpoint, args.tokenizer, args.temperature, args.seed, args.steps, args.prompt, args.model,
                getattr(args, "mode", "generate") != "generate", getattr(args, "template", False), args.system,
                args.cpu != "sse2")):
            raise BootllamaError("--floor builds the packaged model's default story only: give no other option but -o")
        checkpoint, tokenizer = resolve_paths(args)
        return image.build_image(checkpoint, tokenizer, out, floor=True)
    checkpoint, tokenizer = resolve_paths(args)
    inputs = image.image_inputs(checkpoint, tokenizer)
    for path in (out, keep):
        if path is not None:
            refuse_inputs(path, inputs)
    talk = talk_of(args)
    prompt = None if talk else load_prompt(args, checkpoint, tokenizer)
    seed, drawn = resolve_seed(args.seed)
    if drawn and args.temperature > 0:  # as generate: the run can be repeated with -s
        print(f"seed: {seed}", file=sys.stderr)
    tok = Tokenizer.load(tokenizer, read_legacy_config(checkpoint).vocab_size)
    defines = image.engine_defines(tok, args.temperature, is_top_p(args.temperature, args.topp), talk,
                                   CPUS[args.cpu])
    img = image.build_image(checkpoint, tokenizer, out, prompt=prompt, steps=args.steps,
                            temperature=args.temperature, seed=seed, engine=image.assemble(defines),
                            topp=args.topp, talk=talk)
    if keep is not None:
        publish(Path(out), keep, inputs)
    return img


def publish(private: Path, dest: str | os.PathLike[str], inputs: dict[str, Path]) -> None:
    """Give ``dest`` the private image's bytes, atomically: a hard link renamed over it when both
    are on one file system, else a copy through atomic_write; a device or a FIFO is written into.
    The run keeps booting its private file, so a later run that replaces ``dest`` never changes
    what this one boots."""
    refuse_inputs(dest, inputs)
    if is_special(dest):  # a device or a FIFO: the private image's bytes go straight into it
        with open(private, "rb") as src:
            write_into(dest, src)
        return
    target = Path(os.path.realpath(dest))  # (through a symbolic link, as atomic_write)
    link = target.parent / f".{target.name}.{os.getpid()}.tmp"
    with deferred():  # the link and its rename (or removal) together
        try:
            os.link(private, link)
        except OSError:
            pass  # another file system, or no hard links there: copy below
        else:
            try:
                os.replace(link, target)
                return
            except OSError as e:
                remove(link)
                raise BootllamaError(f"cannot write {os.fspath(dest)}: {e.strerror or e}") from None
    with atomic_write(dest, inputs) as f, open(private, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


def cmd_build(args: argparse.Namespace) -> int:
    img = _build(args, args.output)
    lay = img.layout
    print(image.format_size_table(img.engine), file=sys.stderr)
    if img.uefi is not None:
        print(image.format_uefi_size_table(img.uefi), file=sys.stderr)
    talk = talk_of(args)
    what = (("run.c's chat" if "ENC_BPE=0" in img.engine.defines else "the model's chat template") + " at boot"
            if talk and talk.mode == "chat" else "a story for each prompt typed at boot" if talk
            else f"{len(img.prompt_ids)} prompt tokens")
    print(f"wrote {args.output}: {lay.disk_sectors} sectors, {what}, "
          f"{img.steps} steps, needs {lay.memory_mib} MiB of memory and a CPU with {img.engine.cpu}",
          file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    accel = qemu.choose_accel(args.accel) if args.pc in pcs.QEMU_PCS else args.pc
    # the run boots its own private image; --image gets a copy (a link) of it
    with temp_dir() as tmp:
        path = tmp / "boot.img"
        img = _build(args, path, keep=args.image)
        lay = img.layout

        def stream(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

        timeout = args.timeout or default_timeout(lay.tokenizer_addr - lay.checkpoint_addr, img.steps)
        # a conversation or the story machine: standard input's lines go to COM1 as they come (a
        # terminal gives whole lines and echoes them itself; a pipe works too), then EOT at its end
        typed = args.mode == "chat" or args.prompt == TYPED
        if typed and not args.timeout and sys.stdin.isatty():
            timeout = INTERACTIVE_TIMEOUT  # a person types at their own pace
        result = pcs.boot(args.pc, path, lay, accel=accel if args.pc in pcs.QEMU_PCS else "tcg",
                          cpu=QEMU_CPU[args.cpu] if args.pc in pcs.QEMU_PCS else None, timeout=timeout,
                          on_bytes=stream, input=sys.stdin.buffer if typed else None)
    rate = f", {result.tokens} tokens, {result.tok_per_s:.1f} tok/s" if result.tokens else ""
    print(f"load {result.load_seconds:.2f} s, generation {result.gen_seconds:.2f} s{rate} "
          f"({accel.upper()}, {lay.memory_mib} MiB)", file=sys.stderr)
    return 0


def _add_cpu(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu", choices=tuple(CPUS), default="sse2",
                        help="the processor the image is for: sse2 (default; SSE scalar products) or 486 "
                             "(an i486DX or later: x87 products, no SSE or CPUID); `run` gives QEMU that CPU")


def add_engine_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    build = subparsers.add_parser("build", help="write a bootable disk image (engine, manifest, model)")
    add_generate_arguments(build)
    build.add_argument("-o", dest="output", required=True, metavar="IMAGE", help="raw disk image to write")
    _add_cpu(build)
    build.add_argument("--floor", action="store_true",
                       help="the smallest engine: the packaged model's default story on QEMU only (COM1, no guards)")
    build.set_defaults(func=cmd_build)

    run = subparsers.add_parser("run", help="build the image and boot it in QEMU (or another PC), streaming the story")
    add_generate_arguments(run)
    run.add_argument("--pc", default=pcs.DEFAULT, choices=pcs.NAMES,
                     help=f"the PC to boot: {', '.join(pcs.NAMES)} (default {pcs.DEFAULT})")
    run.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                     help="QEMU accelerator: hardware KVM if kvm_intel/kvm_amd is loaded, else TCG")
    run.add_argument("--timeout", type=float, default=None,
                     help="seconds before giving up (default: 600 plus a bound on the model's load and steps; "
                          "about 10 minutes for stories260K, 3 hours for SmolLM2's whole context)")
    run.add_argument("--image", metavar="IMAGE", help="also keep the built image at this path")
    _add_cpu(run)
    run.set_defaults(func=cmd_run)
