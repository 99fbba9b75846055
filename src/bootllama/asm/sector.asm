; bootllama: a Llama-2 forward pass in a boot sector and the sectors it loads.
;
; The BIOS loads sector 0, an MBR (boot code in its first 440 bytes, one
; partition entry that the builder fills in, 0x55AA), at 0x7C00 and jumps to it
; in 16-bit real mode.  Sector 0 reads 32 sectors from LBA 1 to 0x7E00: the
; engine's tail sectors, the manifest's copy (LBA MLBA) and the sector at VARS
; (LBA MLBA + 1: the checkpoint header, which the builder writes, then exp's
; constants, assembled below), so the manifest's fields, the header and the
; constants are used in place (BP = VARS).  Then it checks the PC (CPU, A20, memory: each failure
; prints a message and stops), loads the data area (from the manifest's
; M_DLBA: the manifest, the unmodified llama2.c legacy checkpoint, the
; unmodified tokenizer.bin, the prompt ids, a table of per-layer addresses,
; the piece directory, the RoPE values) to 1 MiB and above, switches to 32-bit protected mode and
; runs engine.inc (llama2.c's generate loop and forward pass).
;
; Modes: the loader runs in "unreal" 16-bit real mode (ES keeps a 4 GiB
; limit from a brief trip into protected mode, so the copy reaches 1 MiB
; while BIOS calls still work; a BIOS call may reload segment limits, so
; rputc, which follows every BIOS call, redoes unreal).  engine.inc runs in
; flat 32-bit protected mode with interrupts off; its putc goes back to real
; mode for the BIOS teletype (and COM1) and returns: the screen stays the
; BIOS's, on every PC whose BIOS has a teletype.
;
; Builds: -DSAMPLING adds run.c's temperature sampling; -DCPU486 runs on an
; i486DX (no SSE, no CPUID); -DHALT ends with hlt only (no isa-debug-exit);
; -DA20OFF switches A20 off first, -DNOA20 skips switching it on (tests).
;
; Memory map (physical): engine.inc's, and
;   0x0000C          IVT entry 3 (int3): die, every message's way out
;   0x00018          IVT entry 6 (#UD; the 486 build: 7, #NM): the CPU message
;   0x04080          SEL_C16's base (putc's real mode runs with CS = SEL_C16)
;   0x07C00          sector 0, then at 0x7E00 the TAIL tail sectors: code,
;                    and nothing the engine writes, in pages 0x7000-0x8FFF
;   0x0ADF0-0x0EDEF  the disk bounce buffer while loading (below 64 KiB:
;                    the copy reads it through SI)
; Exit: the byte written to port 0xF4 (QEMU's isa-debug-exit: status
; 2 * byte + 1): 10 the story ended (the final newline's byte, so QEMU's
; own status 1 is never taken for it), 2 disk, 3 A20, 4 CPU, 5 memory, 6 the
; data check (the load loop sums the dwords it copies; the builder's M_FIX
; makes the sum 0).

bits 16
org 0x7c00


PRE     equ 0x7E00              ; the boot read: tail sectors, manifest, header
MLBA    equ 10                  ; the manifest's LBA in the boot read: it lands
                                ; at 0x9000, the page after the code's, so that
                                ; writes to the work variables never hit a page
                                ; of code (QEMU and v86 translate it again)
BOUNCE  equ PRE + STACK - 16    ; the disk bounce buffer (16 KiB from
                                ; 0xADF0, below 64 KiB: SI walks it): the
                                ; DAP's address as the offset from PRE's
                                ; segment, past the fields and the header
CHUNK   equ 32                  ; sectors per int 13h read (16 KiB)
SEL_D   equ 0x3F8               ; GDT selectors: flat data (COM1's port,
SEL_C32 equ SEL_D + 8           ; which rputc has in dx), flat 32-bit code,
SEL_C16 equ SEL_D + 16          ; 16-bit code (the way back to real mode),
RMB     equ SEL_C16 * 16        ; based where real mode puts CS = SEL_C16

; exit codes (below 32: each also ends its message)
E_DISK  equ 2
E_A20   equ 3
E_CPU   equ 4
E_MEM   equ 5

start:
    cli                         ; (interrupts off from here: SP visits the
                                ; IVT below; a BIOS handler starts with IF =
                                ; 0 anyway, int clears it)
    xor ax, ax
    mov ds, ax                  ; (ES: rputc's unreal trip sets it from DS)
    mov ss, ax
%ifdef CPU486
    mov sp, 7*4 + 4             ; #NM (no FPU: CR0.EM set) -> the CPU
%else                           ; message
    mov sp, 6*4 + 4             ; #UD -> the CPU message: IVT entry 6 = 0:
%endif                          ; cpufail, pushed (7 bytes, a mov dword 9)
    push ax
    push word cpufail
    mov sp, 3*4 + 4             ; int3 -> die: each message is an int3 (1
    push ax                     ; byte, a call 3) before its text
    push word die
    lea esp, [STACK]            ; (engine.inc's: the stack grows down from
                                ; 0x3000, above x and xb; ESP whole: mv
                                ; compares it with EDI and attention reads
                                ; [esp], whatever the BIOS left in its high
                                ; half)
    lea ebp, [VARS]             ; EBP = VARS, for engine.inc too (a 16-bit
                                ; address zero-extends: 1 byte less than
                                ; mov ebp)
    lgdt [gdtr]                 ; before the first putc, which uses it
    push ax                     ; DAP on the stack: LBA high
    push ax
    push ax
    push byte 1                 ; LBA: the tail sectors, the manifest, ...
    push word PRE >> 4          ; buffer segment
    push ax                     ; buffer offset 0
    push byte CHUNK             ; sector count (push byte: 1 byte shorter)
    push byte 16                ; DAP size
    mov si, sp
    mov ah, 0x42                ; extended read; DL is still the boot drive
    int 0x13                    ; tail code, manifest and header to PRE
                                ; (32 sectors: 0x7E00..0xBDFF; the rest is
                                ; checkpoint data, loaded again to DATA)
    jc diskfail                 ; (the messages sit between the guards and
                                ; the load loop: short jumps from both)
init:
    mov [si+4], si              ; the same DAP: buffer offset -> STACK - 16
                                ; (its own address), so the bounce is at
                                ; BOUNCE (segment PRE >> 4; 1 byte less than
                                ; a byte immediate)
    mov ecx, [bp+M_DLBA]        ; (ecx, not eax: ah stays the read's 0 for
    mov [si+8], ecx             ; the mode set) LBA M_DLBA: the data area,
                                ; manifest first
    push dx                     ; (DL: the boot drive, for the reads below)
    mov dx, 0x3fb               ; COM1 line control: 8 data bits, no parity,
    mov al, 3                   ; 1 stop bit, before the first byte out
    out dx, al                  ; (a BIOS may leave the UART at 5 data bits)
    int 0x10                    ; ah = 0 (the read's status), al = 3: text
                                ; mode 3, which clears the screen

; ---- guards: the CPU, A20, the memory; each stops with its message --------
guards:
%ifdef CPU486
    fninit                      ; (#NM without an FPU: the CPU message)
    fnstsw ax                   ; 0 with an FPU; no FPU leaves ax = 3
    test ax, ax
    jnz cpufail
%else
    lfence                      ; SSE2 (exp's doubles; every CPU with it has
                                ; SSE too): an SSE2 instruction that needs no
                                ; CR4.OSFXSR, #UD on every CPU without SSE2
    mov eax, cr4
    mov ah, 2                   ; CR4.OSFXSR: allow SSE; bits 8, 10..15 0
    mov cr4, eax                ; (PCE, OSXMMEXCPT, UMIP, LA57, VMXE, SMXE:
                                ; nothing a boot sector needs; 1 byte less
                                ; than or)
%endif
%ifdef A20OFF
    in al, 0x92
    and al, ~2
    out 0x92, al                ; (test build: the gate off, as some BIOSes
%endif                          ; leave it)
%ifndef NOA20
    mov ax, 0x2401
    int 0x15                    ; A20 on through the BIOS, ...
    in al, 0x92
    or al, 2
    out 0x92, al                ; ... and through the fast gate
%endif
    push byte -1
    pop es                      ; (ES is free until rputc sets it from DS)
    inc byte [es:bp+POS+16]     ; 0x1091F4, or if A20 is off, 0x91F4: POS
    shr byte [bp+POS], 1        ; (the builder's 0), which then reads 1:
    jc a20fail                  ; CF (0 stays 0: no write to undo; [bp+d8]
                                ; and shr: 3 bytes less than absolute cmp)
    mov ax, 0xe801
    int 0x15                    ; memory from 1 MiB: ax KiB up to 16 MiB,
%ifdef CPU486                   ; bx 64 KiB blocks above it (or in cx, dx)
    jc .m88                     ; no E801: int 15h 88h
%else
    jc .memfail                 ; (every BIOS of an SSE2 PC has E801)
%endif
    jcxz .ab                    ; cx, dx (configured memory) where the BIOS
    xchg ax, cx                 ; gives them, else ax, bx (as Linux does)
    mov bx, dx
.ab:
    shr ax, 6                   ; 64 KiB blocks from 1 MiB to 16 MiB (ah 0)
    sub al, 240                 ; below 240: a hole below 16 MiB (bx's blocks
    jb .low                     ; do not join on), and al = blocks + 16
                                ; (mod 256): the end, in 64 KiB blocks
    xchg ax, bx                 ; 240: ax was 0; the blocks above 16 MiB ...
    inc ah                      ; ... + 256 (the first 16 MiB): the end;
    jz loadall                  ; ah wrapped: 4 GiB
.low:
    cmp ax, [bp+M_NEED+2]       ; the blocks M_NEED starts in (at most 64
    ja loadall                  ; KiB stricter than needed)
.memfail:
    int3
    db "RAM", E_MEM
%ifdef CPU486
.m88:                           ; a 486's BIOS may predate E801
    mov ah, 0x88
    int 0x15                    ; ax = KiB above 1 MiB (at most 64 MiB)
    jc .memfail
    shr ax, 6                   ; its 64 KiB blocks ...
    add ax, 16                  ; ... + the first MiB: the end, as E801's
    jmp short .low
%endif
; ---- the guards' messages: print one, then exit with its code ------------
; (between the guards and the load loop, so that the jumps of both are short;
; each is int3's return address: no mov si and no jmp per message; die
; prints the "!" they all start with)
a20fail:
    int3
    db "A20", E_A20
diskfail:
    int3
    db "disk", E_DISK
datafail:
    int3
    db "data", E_DATA           ; (E_DATA: engine.inc's)
cpufail:                        ; (the #UD or #NM handler)
    int3
    db "CPU", E_CPU
die:                            ; (int3's handler: interrupts off)
    pop si                      ; the message (int3's return address)
    mov al, '!'
.l: call rputc
    lodsb
    cmp al, 32                  ; the code byte ends the message
    jae .l
exit:                           ; (in sector 0: a failed first read loaded
%ifndef HALT                    ; nothing else)
    out 0xf4, al                ; isa-debug-exit: QEMU quits with status 2*al+1
%endif
.h: hlt
    jmp .h

loadall:
    mov edi, [bp+TP]            ; DATA: TP's first value (the builder's)

; ---- load the data area to DATA, CHUNK sectors at a time -----------------
; (the drive waits on the stack, below the DAP, while rputc has dx)
load:
    pop dx                      ; the drive (init's push, then each round's)
    mov si, sp                  ; the DAP, right above it (1 byte less than
                                ; mov si, STACK - 16)
    mov ah, 0x42
    int 0x13                    ; (it may clobber EBX's high half: Bochs's
                                ; BIOS does)
    jc diskfail                 ; (carry: error, or no extended reads)
    add dword [si+8], CHUNK
    mov al, '.'
    push dx                     ; (rputc leaves dx = SEL_D: topm's, once
    call rputc                  ; the last round is done) progress, and
                                ; back to unreal mode
    mov si, BOUNCE              ; (16-bit: the bounce is below 64 KiB)
    mov cx, CHUNK*128           ; CHUNK*128 dwords (loop counts in cx: a16)
.copy:
    lodsd                       ; (DS:SI)
    add [bp+TP], eax            ; the data check: every dword loaded, summed
    a32 stosd                   ; into TP (forward sets it before any use),
    loop .copy                  ; whose first value is DATA (the builder's):
                                ; the seed engine.inc's check uses
    lahf                        ; (ZF: the sum is 0; loop keeps the flags)
    cmp edi, [bp+M_END]
    jb load
    sahf                        ; the builder's M_FIX makes the sum 0; not 0:
    jnz datafail                ; a damaged or moved data area ("!data")
    push cx                     ; popad, ret: to engine.inc, EBP = VARS; the
    push word engine_start      ; dword engine_start (cx is 0 after the copy
    pushad                      ; loop; engine_start is below 64 KiB)
                                ; fall into topm

; ---- topm: real mode -> flat 32-bit protected mode, then popad and ret ----
; (from the load loop with CS = 0, from putc with CS = SEL_C16: both real
; mode segments whose base is 16 times the selector, so near calls, jumps
; and rets work in both; the far jump's target is flat)
topm:
    call pe                     ; PE on (interrupts are off), ES = dx
    mov ds, dx                  ; dx = SEL_D (rputc leaves it; 16-bit code
    mov ss, dx                  ; in protected mode: the selectors load as
                                ; they would in 32-bit; the stack stays
                                ; below 64 KiB: SP is ESP)
    jmp SEL_C32:.pm             ; a 16-bit far jump: .pm is below 64 KiB
bits 32
.pm:
    popad
    ret

; ---- putc (32-bit): al to COM1 and the screen, through real mode --------
; SEL_C16's base is RMB = SEL_C16 * 16, what real mode gives CS = SEL_C16:
; with PE off, the code goes on in real mode without a far jump to CS = 0,
; and the BIOS's iret reloads CS = SEL_C16 to the same base.  Offsets in
; that segment are addresses - RMB.
putc:
    pushad
    jmp word SEL_C16:.rm - RMB  ; (a 16-bit offset: 1 byte shorter)
bits 16
.rm:
    call pe                     ; PE off (al is the byte): real mode
    push byte 0
    pop ss                      ; SS = 0 for the BIOS, which may switch
                                ; stacks and back (ES: rputc loads its own;
                                ; the teletype takes no pointer)
    push word topm - RMB        ; rputc returns to topm
                                ; fall into rputc

; ---- rputc: al to COM1 and to the screen (BIOS teletype, LF then CR) -----
; then unreal: give ES its 4 GiB limit again, interrupts off.  Leaves
; dx = SEL_D (topm's selector); clobbers eax, bx, cx (putc's pushad keeps
; the engine's, die and the load loop need none but dx's drive, saved)
rputc:
    xchg ax, cx                 ; cl = the byte
    mov dx, 0x3fd               ; COM1's line status: wait for the
.thre:                          ; transmitter (a real UART drops a byte
    in al, dx                   ; written while it is busy)
    test al, 0x20
    jz .thre
    xchg ax, cx
    mov dl, 0xf8
    out dx, al
.scr:                           ; (echo: the screen only; dx = 0x3F8)
    xor bx, bx                  ; page 0
    mov ah, 0x0e                ; teletype (the BIOS keeps ax, bx, dx)
.tty:
    int 0x10
    cmp al, 10                  ; LF: a CR after it (the screen ends the
    mov al, 13                  ; same as with CR, LF; 4 bytes less than a
    je .tty                     ; CR first and the LF reloaded)
    cli
    push ds                     ; ES's real-mode selector: DS's (0; in
                                ; putc's way, which topm reloads after, any)
    call pe                     ; PE on, ES = dx = 0x3F8 (COM1), also the
                                ; selector of the flat data descriptor;
    call pe                     ; PE off: the 4 GiB limit stays cached
    pop es                      ; ... as ES, so the BIOS can save and
                                ; restore it (only ES: the copy's source
    ret                         ; is the bounce, below 64 KiB)

; ---- pe: CR0.PE toggled (real <-> protected mode; every switch); clobbers
; ebx.  (A near call and ret work on either side: CS keeps its cached base
; and its 16-bit size until the far jump that follows.)
pe:
    mov ebx, cr0
    xor bl, 1
    mov cr0, ebx
    mov es, dx                  ; PE on: dx = SEL_D (topm, rputc), flat; off:
                                ; any (real mode), ES is set again after
    ret                         ; (this byte and the one before are the
                                ; GDT's limit)


; GDTR, lgdt's 6 bytes with a 16-bit operand size, over the flat data
; descriptor's first 4: the limit is the word before (mov es, dx's last
; byte and ret: 0xC3C2, more than the 0x40F), the 24-bit base is the
; descriptor's limit bits 0..15 and base bits 0..7 (0), then a byte the CPU
; ignores (base bits 8..15).  So the GDT starts at flat - SEL_D, and the flat
; descriptor is entry 127 (selector 0x3F8, the COM1 port rputc has in dx);
; entries 0..126 are whatever lies below it, never loaded.  Its limit in
; 4 KiB pages is 0xF0000 + flat - SEL_D: above 3.8 GiB, more than any run's
; M_NEED (the builder's MAX_MEMORY is 3 GiB).  (3 bytes less than a base of
; its own.)
gdtr    equ $ - 2
gdt:                            ; (for the size table: the GDT's own bytes)
flat:   dw flat - SEL_D, 0      ; SEL_D: flat data, B = 0 (a 16-bit stack
        db 0, 0x92, 0x8f, 0     ; in real mode, also for the BIOS)
        dw 0xffff, 0            ; SEL_C32: flat 4 GiB 32-bit code
        db 0, 0x9a, 0xcf, 0
        dw 0xffff, RMB          ; SEL_C16: 64 KiB 16-bit code, base RMB
        db RMB >> 16, 0x9a, 0, 0

; ---- the MBR's fields: the builder writes the disk signature and the entry
    times 440-($-$$) db 0       ; boot code ends here
    times 6 db 0                ; disk signature (4 bytes), 2 reserved
    times 64 db 0               ; partition table (entry 0: the data area)
    dw 0xaa55                   ; the tail sectors follow
; ---- the tail sectors: engine.inc ----------------------------------------
%define SUMMED                  ; (the load loop did engine.inc's data check)
%include "engine.inc"
%ifdef TALK
; ---- getc (32-bit): al = the next input byte, ah = 1 if from the keyboard ----
; COM1's receiver or the BIOS keyboard, whichever has a byte first (talk.md);
; waits in real mode with interrupts on, so the keyboard's IRQ is served
getc:
    pushad
    jmp word SEL_C16:.rm - RMB  ; (a 16-bit offset)
bits 16
.rm:
    call rmode
    sti                         ; the keyboard's IRQ fills the BIOS's buffer
.poll:
    mov dx, 0x3fd
    in al, dx
    mov dl, 0xf8                ; (COM1's data; SEL_D for topm)
    test al, 1                  ; COM1's line status: a byte received
    jnz .com
    mov ah, 1
    int 0x16                    ; a keystroke waiting? (ZF = 0)
    jz .poll
    mov ah, 0
    int 0x16                    ; take it: al = its ASCII (0: none)
    mov ah, 1
    jmp short .got
.com:
    in al, dx                   ; COM1's byte
    mov ah, 0
.got:
    cli
    mov bp, sp
    mov [bp+28], ax             ; into pushad's eax (SS = 0)
    jmp topm

; ---- echo (32-bit): al to the screen only (typed text; never COM1) ---------
bits 32
echo:
    pushad
    jmp word SEL_C16:.rm - RMB  ; (a 16-bit offset)
bits 16
.rm:
    call rmode
    mov dx, 0x3f8               ; (the flat selector, for rputc's unreal)
    call rputc.scr              ; rputc after its COM1 part
    jmp topm

; real mode from the 16-bit code segment (PE off, CS = SEL_C16 as a real
; mode segment, see putc; SS = 0)
rmode:
    call pe                     ; PE off
    push byte 0
    pop ss                      ; SS = 0 for the BIOS
    ret
bits 32
%endif
    align 512, db 0
engine_end:
TAIL    equ (engine_end - $$) / 512 - 1   ; sectors after this one
; ---- the sector at VARS (LBA MLBA + 1 in the boot read) ---------------------
; The builder writes LBA MLBA (the manifest's copy) and this sector's first 28
; bytes (the checkpoint header); the rest is assembled here: exp's constants
; at [ebp+K], so that engine_start copies nothing (image.assemble keeps these
; bytes apart from the code sectors)
    times (MLBA + 1) * 512 - ($ - $$) db 0  ; (zeros: the manifest's sector)
    times K db 0                ; the header's place (and SSE sampling's pad)
    EXPCONSTS
    align 512, db 0
%if PRE + TAIL*512 > 0x7C00 + MLBA*512
  %error "the engine's tail sectors run into the manifest's sector"
%endif
%if VARS != 0x7C00 + MLBA*512 + 512
  %error "engine.inc's VARS is not where the boot read puts the header"
%endif
%if PRE + CHUNK*512 < VARS + 512 || BOUNCE + CHUNK*512 > 0x10000
  %error "the boot read misses the header, or the bounce passes 64 KiB"
%endif
%if flat - $$ + 0x7C00 < SEL_D || flat - $$ + 0x7C00 - SEL_D > 0xFFFF
  %error "the flat descriptor's address - SEL_D (the GDT's base) is no word"
%endif
%if BOUNCE < VARS + 512 || RMB > 0x7C00
  %error "the bounce overlaps the fields or the header; or SEL_C16's base is above the code"
%endif
