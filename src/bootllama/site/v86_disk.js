// bootllama: a disk read past the end of the image fails in v86 as it does on QEMU and a real drive.
// v86 0.5.462 answers such a read (ATA READ SECTORS, PIO or DMA) with status 0xFF, "busy" for ever,
// so the BIOS waits out its time-outs and the sector's "!disk" never comes; a real drive and QEMU
// abort the command (status DRDY|ERR, error ABRT), the BIOS returns a disk error at once and the
// sector stops with "!disk" (exit code 2).  One file for the page (a <script>) and for the Node
// harness (pcs/v86_boot.mjs imports it): it defines globalThis.bootllamaAbortReadsPastTheEnd.
"use strict";

// ATA read commands whose LBA and count are the 48-bit forms (v86's ide.js: is_lba48)
const LBA48_READS = { ata_read_sectors: [0x24, 0x29], ata_read_sectors_dma: [0x25] };

// Patch the IDE drives of a loaded V86 (after "emulator-loaded"); once per page or process, as
// the methods live on v86's IDEInterface prototype.  Throws when this v86 has other internals.
globalThis.bootllamaAbortReadsPastTheEnd = function (emulator) {
    const ide = emulator.v86 && emulator.v86.cpu.devices.ide;
    const drive = ide && ide.primary && ide.primary.master;
    const proto = drive && Object.getPrototypeOf(drive);
    if (!proto || typeof proto.ata_abort_command !== "function" || typeof proto.get_lba !== "function" ||
        typeof proto.get_count !== "function") {
        throw new Error("this v86 has no IDE drive methods bootllama knows (it was written for v86 0.5.462)");
    }
    if (proto.bootllamaAbortsPastTheEnd) return;
    for (const [name, lba48] of Object.entries(LBA48_READS)) {
        const read = proto[name];
        if (typeof read !== "function") throw new Error(`this v86 has no IDE method ${name}`);
        proto[name] = function (cmd) {
            const is48 = lba48.includes(cmd);
            const end = (this.get_lba(is48) + this.get_count(is48)) * this.sector_size;
            if (this.buffer && end > this.buffer.byteLength) {
                this.ata_abort_command();  // error ABRT, status DRDY|ERR, an interrupt: QEMU's ide_rw_error
                return;
            }
            read.call(this, cmd);
        };
    }
    proto.bootllamaAbortsPastTheEnd = true;
};
