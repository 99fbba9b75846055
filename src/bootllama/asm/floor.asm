; bootllama's floor: the fewest bytes that print llama2.c's default
; stories260K story (greedy, no prompt) under QEMU, from the same forward
; pass as the other builds (engine.inc, assembled with -DFLOOR).
;
; What is dropped: the screen (COM1 only, no UART set-up or busy wait), the
; guards (CPU, A20, memory, the data check), prompts, sampling, the step
; count, the beats, the isprint test on byte pieces, glibc's expf (an x87
; exp that keeps this one story exact).  What is kept: everything the
; default story needs, with the dimensions still read from the header.
;
; Disk (image.build_image(floor=True)): this sector, the engine's tail
; sectors, zeros up to LBA 1 + CHUNK, then the data area (the manifest
; first) as for the other builds, padded to whole cylinders.
; Loader: 16-bit real mode, BIOS extended reads; the first read puts LBA
; 1..CHUNK (the tail) at 0x7E00, the next ones go to BOUNCE and are copied
; to DATA through ES with a 4 GiB limit (unreal mode) until a read past the
; disk's end fails; then flat 32-bit protected mode: DS loaded, ES keeping
; its flat descriptor, SS the real-mode one (base 0, B = 0: the stack stays
; below 64 KiB).  EBP = VARS = DATA + 512, the checkpoint header.
; The x87 runs as QEMU's reset leaves it (empty, 64-bit precision), the
; story stays exact; rmsnorm's eps is the builder's, in the manifest.
; Exit: isa-debug-exit (port 0xF4), 0: the story ended.

bits 16
org 0x7c00

CHUNK   equ 32                  ; sectors per read (16 KiB)
%if (CHUNK*128) & 0xFF
  %error "the copy's count is set through CH"
%endif
BOUNCE  equ 0x2E00              ; the read buffer (below 64 KiB: DS stays a
                                ; real-mode segment): segment 0x02E0, the
                                ; first read's 0x07E0 with its high byte 0x02
SEL_D   equ 8                   ; GDT selectors: flat 4 GiB data,
SEL_C32 equ 16                  ; flat 32-bit code

start:
    cli                         ; for good (each int restores our IF)
    mov eax, cr4
    or ah, 2                    ; CR4.OSFXSR: allow SSE
    mov cr4, eax
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x1000              ; the stack below 0x1000, as engine.inc's
    lgdt [gdtr]
    push ax                     ; the DAP on the stack: LBA high,
    push ax
    push ax
    push byte 1                 ; LBA 1: the tail sectors
    push word 0x07E0            ; buffer 0x07E0:0 (0x7E00)
    push ax
    push byte CHUNK             ; sectors
    push byte 16                ; DAP size
    mov si, sp
    mov ah, 0x42                ; extended read; DL is the boot drive
    int 0x13
    mov byte [si+7], BOUNCE >> 12 ; buffer 0x02E0:0; the LBA runs on to the
    mov edi, DATA               ; data area (the builder puts it there)
    xor ecx, ecx                ; (ECX's high word 0 for the copies)
load:
    add word [si+8], CHUNK      ; the next LBA (the first: 1 + CHUNK)
    mov ah, 0x42
    int 0x13
    jc topm                     ; a read past the disk's end: all loaded
    push es                     ; the real-mode selector (0) ...
    mov eax, cr0
    inc ax                      ; PE on (interrupts are off)
    mov cr0, eax
    mov bx, SEL_D
    mov es, bx                  ; a 4 GiB limit, base 0
    dec ax
    mov cr0, eax                ; PE off: the limit stays cached
    pop es                      ; ... back (selector 0, base 0)
    mov esi, BOUNCE
    mov ch, CHUNK*128 >> 8      ; dwords (ECX is 0: from the xor, then each
                                ; copy leaves it 0; the BIOS keeps it)
    a32 rep movsd               ; to DATA and up
    mov si, sp                  ; the DAP again
    jmp load

topm:
    mov ebp, VARS               ; (engine.inc's entry state)
    mov eax, cr0
    inc ax                      ; PE on
    mov cr0, eax
    mov ds, bx                  ; flat data (bx = SEL_D from the loop); ES
    jmp dword SEL_C32:engine_start ; keeps its flat descriptor from the loop
bits 32

putc:                           ; al to COM1 (QEMU's UART: no wait, no set-up);
    mov dx, 0x3f8               ; clobbers edx (no caller in the floor keeps
    out dx, al                  ; anything in it)
    ret

gdtr:                           ; (the null entry, never loaded, is the 8
        dw 23                   ; bytes before flat)
        dd flat - SEL_D
flat:   dw 0xffff, 0            ; SEL_D: flat 4 GiB data
        db 0, 0x92, 0xcf, 0
        dw 0xffff, 0            ; SEL_C32: flat 4 GiB 32-bit code
        db 0, 0x9a, 0xcf, 0

    times 440-($-$$) db 0       ; boot code ends here
    times 6 db 0                ; disk signature (4 bytes), 2 reserved
    times 64 db 0               ; partition table (entry 0: the data area)
    dw 0xaa55                   ; the tail sectors follow
%include "engine.inc"
    align 512, db 0
