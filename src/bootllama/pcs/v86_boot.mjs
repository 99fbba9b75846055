// Boot a bootllama image in v86 under Node: COM1's bytes go to stdout as they arrive; one JSON
// line goes to stderr at the end: {"status": S, "beats": N} where S is QEMU's isa-debug-exit
// status for the byte the sector wrote to port 0xF4 (2*al+1), or null if the guest halted with
// interrupts off without writing one.  A read past the end of the image fails as on QEMU
// (../site/v86_disk.js), so a short disk ends with the sector's "!disk" instead of a hang.  Exit code 0 when a result line was written, 2 on a timeout,
// 3 on a harness error.
//
// With INPUT "serial-in", the bytes on stdin go to COM1's receiver as they come (v86's UART
// queues them without a bound; the Python side sends LF and EOT when its input ends).
//
// usage: node v86_boot.mjs V86_DIR IMAGE MEMORY_MIB BIOS VGA_BIOS TIMEOUT_S [INPUT]

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [v86Dir, imagePath, memoryMib, biosPath, vgaBiosPath, timeoutS, inputMode] = process.argv.slice(2);
if (!timeoutS) {
    process.stderr.write("usage: node v86_boot.mjs V86_DIR IMAGE MEMORY_MIB BIOS VGA_BIOS TIMEOUT_S\n");
    process.exit(3);
}

const { V86 } = await import(pathToFileURL(path.join(v86Dir, "build", "libv86.mjs")).href);
// defines globalThis.bootllamaAbortReadsPastTheEnd (a plain script the web page loads too)
await import(new URL("../site/v86_disk.js", import.meta.url).href);

function bufferOf(file) {
    const b = fs.readFileSync(file);
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}

// power-of-two memory, as v86 wants, at least what the image asks for
let memory = 1 << 20;
while (memory < Number(memoryMib) * (1 << 20)) memory *= 2;

const emulator = new V86({
    wasm_path: path.join(v86Dir, "build", "v86.wasm"),
    memory_size: memory,
    vga_memory_size: 8 << 20,
    bios: { buffer: bufferOf(biosPath) },
    vga_bios: { buffer: bufferOf(vgaBiosPath) },
    hda: { buffer: bufferOf(imagePath) },
    boot_order: 0x132, // hard disk first
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    log_level: 0,
});

let pending = [];
let beats = 0;
let finished = false;

function flush() {
    if (pending.length) {
        process.stdout.write(Buffer.from(pending));
        pending = [];
    }
}

function finish(result, code) {
    if (finished) return;
    finished = true;
    clearInterval(poll);
    clearTimeout(timer);
    if (inputMode === "serial-in") process.stdin.destroy();
    emulator.stop();
    flush();
    process.stderr.write(JSON.stringify(result) + "\n");
    // exit once stdout has drained
    process.stdout.write("", () => process.exit(code));
}

emulator.add_listener("serial0-output-byte", (byte) => {
    pending.push(byte);
    if (pending.length >= 4096) flush();
});

emulator.add_listener("emulator-loaded", () => {
    const cpu = emulator.v86.cpu;
    try {
        globalThis.bootllamaAbortReadsPastTheEnd(emulator);
    } catch (e) {
        process.stderr.write(`v86_boot.mjs: ${e.message}\n`);
        process.exit(3);
    }
    // port 0xF4: the sector's exit code (QEMU's isa-debug-exit); port 0xE9: one beat per forward pass
    cpu.io.register_write(0xF4, {}, (al) => finish({ status: ((al & 0xFF) << 1) | 1, beats }, 0));
    cpu.io.register_write(0xE9, {}, () => { beats += 1; });
    emulator.run();
    if (inputMode === "serial-in") {
        // COM1's receiver: each byte as it is, never a string (bytes above 0x7F stay bytes)
        process.stdin.on("data", (chunk) => {
            for (const byte of chunk) emulator.bus.send("serial0-input", byte);
        });
        process.stdin.on("error", () => {});
    }
});

// halted with interrupts off: nothing will ever happen again
const poll = setInterval(() => {
    flush();
    const cpu = emulator.v86 && emulator.v86.cpu;
    if (cpu && cpu.in_hlt[0] && !(cpu.flags[0] & 0x200)) finish({ status: null, beats }, 0);
}, 50);

const timer = setTimeout(() => finish({ status: "timeout", beats }, 2), Number(timeoutS) * 1000);
