"""The image that boots both ways and the UEFI engine: the ESP's file system, the PE32+ header,
and the story under OVMF (IDE and USB XHCI) and under SeaBIOS from the same image."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import shared_file

from bootllama import fat, image, pcs
from bootllama.checkpoint import Config, load_checkpoint, packaged_path, random_model, write_legacy
from bootllama.errors import BootllamaError
from bootllama.reference import Reference, Sampler, generate
from bootllama.tokenizer import Tokenizer

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")
ORACLE = "oracles/stories260K_greedy.txt"
UEFI_PCS = ("qemu-uefi", "qemu-uefi-usb")


@pytest.fixture(scope="module")
def engine() -> image.Engine:
    return image.assemble()


@pytest.fixture(scope="module")
def default_image(tmp_path_factory: pytest.TempPathFactory, engine: image.Engine) -> image.Image:
    return image.build_image(CKPT, TOK, tmp_path_factory.mktemp("uefi") / "a.img", engine=engine)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_checkpoint(CKPT)


def _fsck(volume: bytes, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("fsck.fat") or "/usr/sbin/fsck.fat"
    path = tmp_path / "esp.img"
    path.write_bytes(volume)
    return subprocess.run([exe, "-n", "-v", str(path)], capture_output=True, text=True)


def test_esp_passes_fsck_and_holds_both_files(default_image: image.Image, tmp_path: Path) -> None:
    lay = default_image.layout
    disk = default_image.path.read_bytes()
    assert len(disk) == lay.disk_sectors * image.SECTOR and lay.disk_sectors % image.CYLINDER == 0
    entry = disk[image.MBR_TABLE_AT:image.MBR_TABLE_AT + 16]
    assert entry[4] == image.ESP_TYPE and entry[0] == 0x80
    assert struct.unpack_from("<II", entry, 8) == (lay.esp_lba, lay.esp_sectors)
    assert not any(disk[image.MBR_TABLE_AT + 16:510])  # one entry only
    volume = disk[lay.esp_lba * 512:(lay.esp_lba + lay.esp_sectors) * 512]
    result = _fsck(volume, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 files" in result.stdout  # the label, LLAMA.BIN, EFI, EFI/BOOT, BOOTX64.EFI
    # the data file starts at M_DLBA's sector: the manifest, then the checkpoint, byte for byte
    data = disk[lay.data_lba * 512:(lay.last_lba + 1) * 512]
    ckpt = CKPT.read_bytes()
    assert data[512:512 + len(ckpt)] == ckpt
    vol = lay.volume()
    assert vol.file_lba(image.DATA_FILE) == lay.data_lba
    efi_at = vol.offset(image.EFI_FILE)
    assert volume[efi_at:efi_at + lay.efi_size] == image.assemble_uefi(engine_defines(default_image)).code
    # the legacy boot read's copies at LBA 10..11: the manifest's, then the header with the
    # engine's exp constants after it (its sector at VARS)
    assert disk[10 * 512:11 * 512] == data[:512]
    hdr = image.HEADER_BYTES
    assert disk[11 * 512:12 * 512] == ckpt[:hdr] + default_image.engine.vars_sector[hdr:]


def engine_defines(img: image.Image) -> tuple[str, ...]:
    return img.engine.defines


def test_fat_types_by_size(tmp_path: Path) -> None:
    # FAT16 for small files (padded to 4085 clusters), FAT32 past 2 GiB; fsck accepts both
    # (the files' contents are zeros here: fsck reads the metadata)
    for size, bits in ((3000, 16), (300 << 20, 16), (2200 << 20, 32)):
        vol = fat.Volume((("LLAMA.BIN", size), ("EFI/BOOT/BOOTX64.EFI", 4096)), 64)
        assert vol.bits == bits
        path = tmp_path / "v.img"
        with open(path, "wb") as f:
            f.truncate(vol.sectors * fat.SECTOR)
            for offset, data in vol.metadata():
                f.seek(offset)
                f.write(data)
        exe = shutil.which("fsck.fat") or "/usr/sbin/fsck.fat"
        result = subprocess.run([exe, "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
        path.unlink()
    with pytest.raises(BootllamaError, match=r"8\.3"):
        fat.Volume((("LLAMA.DATA", 1),), 64)


def test_pe_header(default_image: image.Image) -> None:
    code = image.assemble_uefi().code
    assert code[:2] == b"MZ"
    pe = struct.unpack_from("<I", code, 0x3C)[0]
    assert code[pe:pe + 4] == b"PE\0\0"
    machine, sections, _, _, _, opt_size, _ = struct.unpack_from("<HHIIIHH", code, pe + 4)
    assert (machine, sections, opt_size) == (0x8664, 1, 240)
    opt = pe + 24
    magic, = struct.unpack_from("<H", code, opt)
    entry, = struct.unpack_from("<I", code, opt + 16)
    sect_align, file_align = struct.unpack_from("<II", code, opt + 32)
    size_of_image, size_of_headers = struct.unpack_from("<II", code, opt + 56)
    subsystem, = struct.unpack_from("<H", code, opt + 68)
    assert (magic, sect_align, file_align, subsystem) == (0x20B, 0x1000, 512, 10)
    assert size_of_headers == 512 and size_of_image % 0x1000 == 0 and 0x1000 <= entry < size_of_image
    name, vsize, vaddr, raw_size, raw_at = struct.unpack_from("<8sIIII", code, opt + 240)
    assert (name, vaddr, raw_at) == (b".text\0\0\0", 0x1000, 512)
    assert raw_size % 512 == 0 and len(code) == 512 + raw_size and vsize >= raw_size


def test_legacy_only_image_keeps_the_old_layout(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", engine=engine, uefi=False)
    # the data area after the boot read's two copies: the manifest's and the sector at VARS (the
    # header, then the engine's exp constants)
    assert img.layout.esp_lba == 0 and img.layout.data_lba == image.MANIFEST_LBA + 2
    raw = img.path.read_bytes()
    vars_at = (image.MANIFEST_LBA + 1) * image.SECTOR
    assert raw[vars_at:vars_at + image.HEADER_BYTES] == CKPT.read_bytes()[:image.HEADER_BYTES]
    assert raw[vars_at + image.HEADER_BYTES:vars_at + image.SECTOR] == engine.vars_sector[image.HEADER_BYTES:]
    assert raw[image.MANIFEST_LBA * image.SECTOR:vars_at] == raw[img.layout.data_lba * image.SECTOR:][:image.SECTOR]
    assert img.path.read_bytes()[image.MBR_TABLE_AT + 4] == image.PARTITION_TYPE
    with pytest.raises(BootllamaError, match="UEFI"):
        pcs.boot("qemu-uefi", img.path, img.layout, timeout=30)


# under SeaBIOS (qemu) the dual image's story is test_engine.py's default story, the same boot: slow here;
# over XHCI (qemu-uefi-usb) the quick suite has a short story (test_pcs.py's on every disk controller)
@pytest.mark.parametrize("name", ["qemu-uefi", pytest.param("qemu-uefi-usb", marks=pytest.mark.slow),
                                  pytest.param("qemu", marks=pytest.mark.slow)])
def test_default_story_both_ways(name: str, default_image: image.Image) -> None:
    result = pcs.boot(name, default_image.path, default_image.layout, timeout=300)
    assert result.text == shared_file(ORACLE).read_bytes()
    assert result.exit_status == pcs.EXIT_DONE
    assert result.tokens == 346
    assert result.dots == b"." * default_image.layout.chunks


# OVMF over USB XHCI is in the quick suite with a short story (test_pcs.py); its default, prompted
# and sampled stories (the same engine, the same loader) are slow
UEFI_PCS_QUICK = ("qemu-uefi", pytest.param("qemu-uefi-usb", marks=pytest.mark.slow))


@pytest.mark.parametrize("name", UEFI_PCS_QUICK)
def test_prompted_story(name: str, tmp_path: Path, engine: image.Engine, model) -> None:  # type: ignore[no-untyped-def]
    prompt, steps = "Tom and Sue went", 60
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt=prompt, steps=steps, engine=engine)
    want = generate(Reference(model), Tokenizer.load(TOK, model.config.vocab_size), prompt, steps=steps)
    assert pcs.boot(name, img.path, img.layout, timeout=300).text == want


@pytest.mark.parametrize("name", UEFI_PCS_QUICK)
def test_sampled_story(name: str, tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    temperature, seed, steps = 0.8, 42, 256
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=steps, temperature=temperature, seed=seed)
    want = generate(Reference(model), Tokenizer.load(TOK, model.config.vocab_size), None, steps=steps,
                    sampler=Sampler(model.config.vocab_size, temperature, 1.0, seed))
    assert pcs.boot(name, img.path, img.layout, timeout=300).text == want


@pytest.mark.slow
@pytest.mark.parametrize("name", [*UEFI_PCS, "qemu"])
def test_15m_shape(name: str, tmp_path: Path, engine: image.Engine) -> None:
    big_tok = shared_file("models/tokenizer.bin")
    cfg = Config(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256)
    path = tmp_path / "m15.bin"
    write_legacy(random_model(cfg, seed=15), path)
    img = image.build_image(path, big_tok, tmp_path / "a.img", prompt="Once upon", steps=12, engine=engine)
    want = generate(Reference(load_checkpoint(path)), Tokenizer.load(big_tok, cfg.vocab_size), "Once upon",
                    steps=12)
    assert pcs.boot(name, img.path, img.layout, timeout=600).text == want


def test_too_little_memory_gives_ram_message(tmp_path: Path, engine: image.Engine) -> None:
    # a manifest that asks for 3 GiB: OVMF's AllocatePages below 4 GiB fails in a PC of ~70 MiB
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=4, engine=engine)
    with open(img.path, "r+b") as f:
        f.seek(img.layout.data_lba * 512 + 512 - 92)  # M_NEED in the data file's manifest
        f.write(struct.pack("<I", 3 << 30))
    t0 = time.monotonic()
    with pytest.raises(BootllamaError, match="!RAM"):
        pcs.boot("qemu-uefi", img.path, img.layout, timeout=120)
    assert time.monotonic() - t0 < 60  # seconds of firmware boot, never a hang


def test_putc_thunk_keeps_the_engines_state(tmp_path: Path, engine: image.Engine) -> None:
    # the mechanism alone: a 32-bit payload in engine.inc's place, entered as engine.inc is, prints
    # through putc's far call and 64-bit thunk and checks every register, xmm0..7 and the x87
    # stack after each byte, then exits
    app = image.assemble_uefi(("TESTPAYLOAD",))
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=4, engine=engine, uefi=app)
    result = pcs.boot("qemu-uefi", img.path, img.layout, timeout=120)
    assert result.text == b"putc kept every register\n"
    assert result.exit_status == pcs.EXIT_DONE and result.dots == b"." * img.layout.chunks


@pytest.mark.parametrize("defines", [(), ("SAMPLING",)])
def test_uefi_size_table(defines: tuple[str, ...]) -> None:
    app = image.assemble_uefi(defines)
    parts = dict(image.uefi_part_sizes(app))
    assert parts["PE header"] == app.header_bytes == 64 + 24 + 240 + 40  # DOS stub, PE, optional, section
    assert sum(parts.values()) - parts["PE header"] == app.code_bytes
    assert len(app.code) % 512 == 0
    assert "UEFI loader" in parts and "mode switch" in parts
    assert "test payload" not in parts  # the shared forward pass, not the test's
    own = parts["UEFI loader"] + parts["mode switch"]
    assert own <= UEFI_BUDGET, f"the UEFI engine's own code grew to {own} bytes"
    # the rest is engine.inc: as many bytes as in the legacy build (whose budgets hold them), and its
    # 32-bit data check at the end (the legacy loader sums as it loads: -DSUMMED leaves it out)
    legacy = image.assemble(defines)
    first = image.engine_first_label()
    # (and exp's constants, engine.inc's EXPCONSTS: after the stubs here, in the sector at VARS there)
    consts = app.symbols["consts_end"] - app.symbols["consts"]
    shared = app.symbols["uefi_entry"] - app.symbols[first] + consts
    check = app.symbols["uefi_entry"] - app.symbols["datacheck"]
    assert app.code_bytes == own + shared
    assert shared - check == sum(n for name, n in legacy.sizes
                                 if legacy.symbols.get(name, 0) >= legacy.symbols[first] and name != "signature")
    assert consts == dict(legacy.sizes)["consts"]
    assert 0 < check <= 48 and "datacheck" not in legacy.symbols


# the UEFI engine's own code bytes (loader, mode switch), PE header apart: measured. 2,034 -> 1,993:
# exp's constants are assembled at VARS + K in section eng (zeros before them, not code: the EFI
# file 3,584 -> 7,680 bytes, 8,192 with -DTALK), as the legacy engine's sector at VARS has them, so uefi_entry copies
# nothing (-13); the loader copies the engine's bytes first, then the manifest sector and the
# header's 28 bytes over its zeros (rep movsd, cl: -4), the thunks on from where that copy ends
# in the file (-7, whole qwords: -2), and the manifest sector's copy to DATA loses a redundant
# B + DATA (-15). 1,993 -> 1,929: the thunks' variables and far pointers written in a row with
# stos (-48), t_echo and t_getc only with -DTALK (-16). 1,929 -> 1,865: the GDT's set-up (sgdt
# straight into the thunks' t_fwgdtr, the descriptors' high dword by rol/bswap, the new GDTR after
# the GDT). 1,865 -> 1,653: efi_main's frame addressed from rbp = rsp + 0x80 (disp8, no SIB:
# -136), the boot services in r15 (-24), the load loop as one do-while (-28), emit_main falling
# into emit (-8) and smaller jumps and moves (-16). 1,653 -> 1,641: zeros stored with and, r9 = 1
# by push/pop, emit's CR LF in one store
UEFI_BUDGET = 1641


def _same_bytes_but_calls_out(legacy: image.Engine, app: image.UefiEngine) -> int:
    """engine.inc's bytes in both builds, at the same address: equal except the rel32 of the
    calls and jumps to putc and exit (each engine's own, outside engine.inc).  Returns how many
    such references differ."""
    first = image.engine_first_label()
    start = legacy.symbols[first]
    assert app.symbols[first] == start
    n = app.symbols["datacheck"] - start  # engine.inc's bytes but the data check, which only the UEFI
    # engine has (at engine.inc's end; the legacy loader sums as it loads)
    ours = legacy.code[start - image.ORG:start - image.ORG + n]
    theirs = app.code[app.eng_offset:app.eng_offset + n]
    assert len(ours) == len(theirs) == n
    targets = ({legacy.symbols["putc"], legacy.symbols["exit"]}, {app.symbols["putc"], app.symbols["exit"]})
    i = refs = 0
    while i < n:
        if ours[i] == theirs[i]:
            i += 1
            continue
        for field in range(max(i - 3, 0), min(i, n - 4) + 1):  # the rel32 field holding byte i
            rel_o = struct.unpack_from("<i", ours, field)[0]
            rel_t = struct.unpack_from("<i", theirs, field)[0]
            if (start + field + 4 + rel_o) in targets[0] and (start + field + 4 + rel_t) in targets[1]:
                break
        else:
            raise AssertionError(f"engine.inc's bytes differ at {start + i:#x}, not in a call to putc or exit")
        refs += 1
        i = field + 4
    return refs


def test_both_engines_run_the_same_forward_pass_bytes(engine: image.Engine) -> None:
    app = image.assemble_uefi(engine.defines, engine.symbols[image.engine_first_label()])
    assert _same_bytes_but_calls_out(engine, app) > 0
    sampling = image.assemble(("SAMPLING",))
    sampling_app = image.assemble_uefi(("SAMPLING",))
    assert _same_bytes_but_calls_out(sampling, sampling_app) > 0
    # exp's constants: at the same address (VARS + K) in both, the same bytes; the legacy engine's in
    # its sector at VARS, the UEFI engine's at the end of section eng (the loader copies it whole)
    for legacy, uefi in ((engine, app), (sampling, sampling_app)):
        at, end = legacy.symbols["consts"], legacy.symbols["consts_end"]
        assert (uefi.symbols["consts"], uefi.symbols["consts_end"]) == (at, end)
        vars_at = image.ORG + (image.MANIFEST_LBA + 1) * image.SECTOR
        eng_at = uefi.eng_offset - uefi.symbols[image.engine_first_label()]
        assert uefi.code[eng_at + at:eng_at + end] == legacy.vars_sector[at - vars_at:end - vars_at]
        assert uefi.symbols["eng_end"] == end  # (the last bytes the loader copies there)


@pytest.mark.parametrize("name", ["qemu-uefi", "qemu"])
def test_moved_or_damaged_data_file_gives_data_message(name: str, tmp_path: Path, engine: image.Engine) -> None:
    # under UEFI a weight flipped in LLAMA.BIN, under a BIOS the file's bytes moved 4 KiB on (a
    # later write put the file elsewhere, M_DLBA still says here): the data check stops both
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=4, engine=engine)
    lay = img.layout
    at = lay.data_lba * 512
    with open(img.path, "r+b") as f:
        if name == "qemu-uefi":
            f.seek(at + 4096)
            byte = f.read(1)
            f.seek(at + 4096)
            f.write(bytes([byte[0] ^ 0x40]))
        else:
            f.seek(at)
            data = f.read(lay.data_bytes - 4096)
            f.seek(at)
            f.write(bytes(4096) + data)
    with pytest.raises(BootllamaError, match="!data"):
        pcs.boot(name, img.path, lay, timeout=120)


def test_story_machine_on_uefi_reads_com1(tmp_path: Path) -> None:
    """`build -i -` under OVMF: two lines and EOT on COM1 through the harness `run` uses (which
    starts sending at the engine's first byte: OVMF's own serial terminal reads COM1 until the
    engine raises the TPL) give the legacy engine's text (conversation.py's story machine),
    through uefi.asm's getc."""
    import io

    from bootllama.conversation import fgets_lines, story_machine
    from bootllama.talkblock import Talk

    img = image.build_image(CKPT, TOK, tmp_path / "story.img", steps=40, talk=Talk("story"))
    assert img.uefi is not None and img.layout.esp_lba
    lines = b"Once upon a time\nThe sun\n"
    model = load_checkpoint(CKPT)
    tok = Tokenizer.load(TOK, model.config.vocab_size)
    want = story_machine(Reference(model), tok, Sampler(model.config.vocab_size), fgets_lines(io.BytesIO(lines)),
                         steps=40)
    assert want.count(b"Prompt: ") == 3
    got = pcs.boot("qemu-uefi", img.path, img.layout, input=lines, timeout=300)
    assert got.text == want


def test_story_machine_on_uefi_reads_the_keyboard(tmp_path: Path) -> None:
    """The same story machine under OVMF, typed on the PC's keyboard (QMP.type_text; OVMF's PS/2
    driver behind ReadKeyStroke): Enter ends the line, Ctrl-D the input, the story is run -i's."""
    from bootllama.talkblock import Talk

    img = image.build_image(CKPT, TOK, tmp_path / "story.img", steps=30, talk=Talk("story"))
    model = load_checkpoint(CKPT)
    story = generate(Reference(model), Tokenizer.load(TOK, model.config.vocab_size), "The sun", steps=30,
                     sampler=Sampler(model.config.vocab_size))
    got = pcs.boot("qemu-uefi", img.path, img.layout, keys="The sun\n\x04", keys_after=b"Prompt: ", timeout=300)
    assert got.text == b"Prompt: " + story + b"Prompt: \n"
