; bootllama's UEFI engine: an x86-64 UEFI application (\EFI\BOOT\BOOTX64.EFI)
; that runs the legacy engine's forward pass, engine.inc, unchanged.
;
; Why compatibility mode: engine.inc is 32-bit protected-mode code with flat
; segments (form.md).  A 64-bit long-mode CPU runs 32-bit code in
; compatibility mode when CS is a 32-bit code descriptor, and there segment
; bases count again; so the application allocates one region of M_NEED
; bytes at B below 4 GiB, gives CS/DS/ES/SS descriptors whose base is B, and
; places everything where the legacy boot puts it (offsets from B = the
; legacy engine's physical addresses).  The same bytes of forward pass run
; on both kinds of PC, and there is one source of them.
;
; Steps (efi_main, 64-bit, Microsoft x64 calling convention):
;   1. SetWatchdogTimer(0): the boot manager's 5-minute watchdog would reset
;      the PC in the middle of a long story.
;   2. LoadedImage -> DeviceHandle -> SimpleFileSystem -> OpenVolume ->
;      Open("\LLAMA.BIN"): the data area, one file in the ESP.
;   3. Its first sector is the manifest: M_NEED, the memory the run needs,
;      and M_END, where the data area ends (DATA + its size).
;   4. AllocatePages below 4 GiB for M_NEED bytes at B; none: "!RAM", exit 5.
;   5. Read the file to B + DATA, 16 KiB at a time, a '.' per read (the
;      legacy loader's progress protocol); a short read: "!disk", exit 2.
;   6. Place what the legacy boot read would: the engine's 32-bit bytes at
;      B + their org (section eng, assembled with vstart=ENGINE_ORG, runs on
;      in zeros to exp's constants at VARS + K, as sector.asm's sector at
;      VARS has them); the 64-bit thunks (section thunk) at B + THUNK; then
;      the manifest sector and the checkpoint header's 28 bytes at
;      B + VARS - 512, over section eng's zeros.
;   7. A GDT of its own: the firmware's descriptors at their selectors (its
;      CS stays valid), then a 32-bit code and a data descriptor, base B.
;   8. Interrupts off, far return into compatibility mode: uefi_entry loads
;      DS/ES/SS and jumps to the engine's entry.
; putc (compatibility mode) is a far call to thunk_putc (64-bit), which
; switches to the firmware's stack, writes the byte to COM1 and to the text
; consoles that are not serial terminals (UTF-16, CR before LF, interrupts
; on; see "the consoles" below), and returns with iretq.  exit is a
; far jump to thunk_exit: the firmware's stack and GDT back, then finish:
; isa-debug-exit (QEMU), else a key or a timeout, then back to the firmware.
;
; Region map (offsets from B; the engine's own map is engine.inc's):
;   0x0E000          CTX: the putc context (the consoles, UTF-8 state), the far
;                    pointers putc and exit go through (written per byte: a
;                    page without code)
;   0x0F000          THUNK: the 64-bit thunks and their constants
;   0x0F800          the GDT
;   0x100000 = DATA  the data file, as the legacy loader puts it

bits 64
default rel

%ifndef ENGINE_ORG
ENGINE_ORG equ 0x7E00           ; where the engine's bytes go (its legacy org)
%endif
SECT    equ 512
CHUNKB  equ 0x4000              ; bytes per read (and per progress dot)
MAN_NEED equ SECT + M_NEED      ; the manifest's fields (engine.inc's M_*:
MAN_END equ SECT + M_END        ; offsets from VARS, the sector's end)
CTX     equ 0xE000              ; emit's context (see emit)
FAR_PUTC equ CTX + 64           ; m16:32 far pointers for compatibility mode
FAR_EXIT equ CTX + 72           ; (8 bytes apart: the loader's FARPTR)
FAR_GETC equ CTX + 80           ; (-DTALK: typed input, talk.inc's contract)
FAR_ECHO equ CTX + 88
THUNK   equ 0xF000
GDT_AT  equ 0xF800
E_DISK  equ 2                   ; exit codes, as the legacy engine's
E_MEM   equ 5
WAIT_10MS equ 30000             ; finish waits 5 minutes for a key
EFI_ABORTED equ 0x8000000000000015

; EFI tables: offsets
ST_CONIN_H equ 0x28
ST_CONIN equ 0x30
ST_CONOUT_H equ 0x38
ST_CONOUT equ 0x40
ST_STDERR_H equ 0x48
ST_BS   equ 0x60
BS_RAISETPL equ 0x18
BS_RESTORETPL equ 0x20
BS_ALLOCPAGES equ 0x28
BS_FREEPAGES equ 0x30
BS_HANDLEPROT equ 0x98
BS_STALL equ 0xF8
BS_WATCHDOG equ 0x100
BS_LOCATEBUF equ 0x138
LI_DEVICE equ 0x18              ; EFI_LOADED_IMAGE_PROTOCOL.DeviceHandle
FS_OPENVOL equ 8
F_OPEN  equ 8
F_READ  equ 0x20
OUT_STRING equ 8
OUT_CLEAR equ 0x30
IN_RESET equ 0
IN_READKEY equ 8
TPL_NOTIFY equ 16

; emit's context (CTX_SIZE bytes): up to 3 text outputs (0-terminated),
; then the UTF-8 decoder's state, then (-DTALK) up to 3 text inputs
CON_MAX equ 3
C_UTF8  equ 32
%ifdef TALK
C_IN    equ 40
CTX_SIZE equ 64
%else
CTX_SIZE equ 40                 ; (efi_main's frame offsets stay short)
%endif
; efi_main's frame: rbp = rsp + FB there (and in finish), so that the
; offsets from rbp fit a byte (rsp's 0x00..0x2F: the calls' arguments)
FB      equ 0x80
L_IMAGE equ 0x30 - FB
L_ST    equ L_IMAGE + 8
L_BS    equ L_ST + 8
L_CTX   equ L_BS + 8            ; emit's context while B does not exist
L_LI    equ L_CTX + CTX_SIZE    ; (protocol pointers, each written by a call)
L_FS    equ L_LI + 8
L_ROOT  equ L_FS + 8
L_FILE  equ L_ROOT + 8
L_B     equ L_FILE + 8          ; the region (0: not allocated)
L_PAGES equ L_B + 8
L_SIZE  equ L_PAGES + 8         ; Read's in/out size
L_KEY   equ L_SIZE + 8
L_N     equ L_KEY + 16          ; LocateHandleBuffer's count, buffer
L_HANDLES equ L_N + 8
L_DP    equ L_HANDLES + 8
L_TPL   equ L_DP + 8            ; -DTALK: the TPL before RaiseTPL (-1: none)
L_BUF   equ L_TPL + 8           ; the manifest sector while B does not exist
FRAME   equ FB + L_BUF + SECT + 8 ; rsp 16-aligned after 8 pushes and this
%if L_IMAGE < -128 || L_TPL > 127
  %error "efi_main's frame offsets past a byte"
%endif

; CONSOLES guid, skip1, skip2, dest: the handles of protocol guid (the system
; table's handles at skip1 and skip2 apart, and any whose device path holds a
; UART node) -> up to CON_MAX interfaces at [rsp+dest] (efi_main's frame)
%macro CONSOLES 4
    mov ecx, 2                  ; LocateHandleBuffer(ByProtocol, the protocol,
    lea rdx, [%1]               ; NULL, &n, &handles)
    xor r8d, r8d
    lea r9, [rbp+L_N]
    lea rax, [rbp+L_HANDLES]
    mov [rsp+0x20], rax
    call [r15+BS_LOCATEBUF]
    test rax, rax
    jnz %%done
    mov rsi, [rbp+L_HANDLES]
    mov rbx, [rbp+L_N]
    xor edi, edi                ; consoles found
%%handle:
    test rbx, rbx
    jz %%done
    dec rbx
    mov rcx, [rsi+rbx*8]
    mov rax, [rbp+L_ST]
    cmp rcx, [rax+%2]           ; ConOut's and StdErr's own handles: the
    je %%handle                  ; splitters over all the others (some
    cmp rcx, [rax+%3]           ; firmware gives them device paths)
    je %%handle
    lea rdx, [guid_device_path]
    lea r8, [rbp+L_DP]
    call [r15+BS_HANDLEPROT]
    test rax, rax
    jnz %%handle                 ; no device path: ConOut's splitter itself
    mov rax, [rbp+L_DP]
%%node:
    cmp byte [rax], 0x7f        ; the end of the path: no UART on it
    je %%console
    cmp word [rax], 0x0e03      ; messaging (3), UART (14)
    je %%handle
    movzx ecx, word [rax+2]     ; the node's length
    cmp ecx, 4
    jb %%handle                  ; (a malformed path)
    add rax, rcx
    jmp %%node
%%console:
    mov rcx, [rsi+rbx*8]
    lea rdx, [%1]
    lea r8, [rbp+%4+rdi*8]
    call [r15+BS_HANDLEPROT]
    test rax, rax
    jnz %%handle
    inc edi
    cmp edi, CON_MAX
    jb %%handle
%%done:
%endmacro

; FARPTR thunk: at rdi, the far pointer (m16:32) to the thunk at B + THUNK
; (its linear address fits 32 bits), the firmware's 64-bit code selector;
; rdi on by 8 (the last 2 bytes: the selector's high bits, unused)
%macro FARPTR 1
    lea eax, [rbx+THUNK+%1-thunk_start]
    stosd
    mov eax, cs
    stosd
%endmacro

; ==== the PE32+ header (file offset = RVA) =================================
section hdr progbits start=0 vstart=0
hdr_start:
    db "MZ"
    times 0x3c-($-$$) db 0
    dd pe - hdr_start           ; e_lfanew
pe: db "PE", 0, 0
    dw 0x8664                   ; x86-64
    dw 1                        ; one section
    dd 0, 0, 0                  ; time stamp, no symbols
    dw opt_end - opt            ; size of the optional header
    dw 0x0022                   ; executable, large-address aware
opt:
    dw 0x20b                    ; PE32+
    db 0, 0                     ; linker version
    dd text_file_size           ; size of code
    dd 0, 0                     ; initialized, uninitialized data
    dd efi_main                 ; entry point (RVA)
    dd 0x1000                   ; base of code
    dq 0x10000000               ; image base (the loader may put it anywhere:
                                ; the code is RIP-relative, no fix-ups)
    dd 0x1000, SECT             ; section and file alignment
    dw 0, 0, 0, 0, 0, 0         ; OS, image, subsystem versions
    dd 0                        ; win32 version
    dd 0x1000 + text_mem_size   ; size of image
    dd SECT                     ; size of headers
    dd 0                        ; checksum
    dw 10                       ; subsystem: EFI application
    dw 0                        ; DLL characteristics
    dq 0x100000, 0x1000, 0x100000, 0x1000 ; stack, heap reserve/commit
    dd 0                        ; loader flags
    dd 16                       ; data directories
    times 5 dq 0                ; export, import, resource, exception, security
    dd relocs, relocs_end - relocs ; base relocations: one empty block
    times 10 dq 0
opt_end:
section_table:
    db ".text", 0, 0, 0
    dd text_mem_size            ; virtual size
    dd 0x1000                   ; virtual address
    dd text_file_size           ; size of raw data
    dd SECT                     ; pointer to raw data
    dd 0, 0, 0                  ; relocations, line numbers, their counts
    dd 0x60000060               ; code, initialized data, execute, read
hdr_end:
    times SECT-($-$$) db 0

; ==== the application (RVA 0x1000 = file offset 0x200) =====================
section text progbits start=SECT vstart=0x1000
text_start:
efi_main:
    push rbx
    push rbp
    push rsi
    push rdi
    push r12
    push r13
    push r14
    push r15
    sub rsp, FRAME
    lea rbp, [rsp+FB]           ; (kept by the firmware)
    mov [rbp+L_IMAGE], rcx
    mov [rbp+L_ST], rdx
    mov r15, [rdx+ST_BS]        ; r15 = the boot services (kept by the
    mov [rbp+L_BS], r15         ; firmware; finish reloads it)
    xor eax, eax
    lea rdi, [rbp+L_CTX]        ; emit's context: no consoles yet, state 0
    mov ecx, CTX_SIZE / 8
    rep stosq
    mov [rbp+L_B], rax
%ifdef TALK
    dec rax
    mov [rbp+L_TPL], rax        ; (TPL not raised)
    inc eax
%endif
    xor ecx, ecx                ; SetWatchdogTimer(0, 0, 0, NULL): off
    xor edx, edx
    xor r8d, r8d
    xor r9d, r9d
    call [r15+BS_WATCHDOG]

    ; the consoles: every text output whose device path holds no UART node.
    ; ConOut would do, but its serial terminal repeats (with escapes) what
    ; emit writes to COM1 itself, on QEMU and on PCs with console redirection
    CONSOLES guid_text_out, ST_CONOUT_H, ST_STDERR_H, L_CTX
%ifdef TALK
    ; the keyboards: every text input but ConIn's splitter and the serial
    ; terminals (getc reads COM1 itself; the terminal's would repeat it)
    CONSOLES guid_text_in, ST_CONIN_H, ST_CONIN_H, L_CTX+C_IN
%endif
.cons_done:
    mov rax, [rbp+L_ST]
    cmp qword [rbp+L_CTX], 0
    jne .clear
    mov rax, [rax+ST_CONOUT]    ; none: ConOut (a PC whose only console is
    mov [rbp+L_CTX], rax        ; a serial terminal)
.clear:
    xor ebx, ebx
.cls:
    mov rcx, [rbp+L_CTX+rbx*8]
    jrcxz .cleared
    call [rcx+OUT_CLEAR]        ; a clear screen, as the legacy engine's mode 3
    inc ebx
    cmp ebx, CON_MAX
    jb .cls
.cleared:
    mov al, 12                  ; a form feed on COM1 alone: the firmware's
    call com1                   ; text ends, the engine's begins (harnesses
                                ; drop what came before it)

    mov rcx, [rbp+L_IMAGE]      ; the data file: LoadedImage ...
    lea rdx, [guid_loaded_image]
    lea r8, [rbp+L_LI]
    call [r15+BS_HANDLEPROT]
    test rax, rax
    jnz .diskfail
    mov rcx, [rbp+L_LI]         ; ... -> DeviceHandle -> SimpleFileSystem
    mov rcx, [rcx+LI_DEVICE]
    lea rdx, [guid_simple_fs]
    lea r8, [rbp+L_FS]
    call [r15+BS_HANDLEPROT]
    test rax, rax
    jnz .diskfail
    mov rcx, [rbp+L_FS]         ; -> OpenVolume
    lea rdx, [rbp+L_ROOT]
    call [rcx+FS_OPENVOL]
    test rax, rax
    jnz .diskfail
    mov rcx, [rbp+L_ROOT]       ; -> Open(root, &file, name, read, 0)
    lea rdx, [rbp+L_FILE]
    lea r8, [data_name]
    push 1                      ; EFI_FILE_MODE_READ
    pop r9
    and qword [rsp+0x20], 0
    call [rcx+F_OPEN]
    test rax, rax
    jnz .diskfail
    lea rdx, [rbp+L_BUF]        ; the manifest sector
    mov ecx, SECT
    call read
    mov eax, [rbp+L_BUF+MAN_END]
    cmp eax, DATA + SECT
    jbe .diskfail                ; (not a manifest of ours)
    mov edx, [rbp+L_BUF+MAN_NEED]
    cmp edx, eax
    jb .diskfail
    add rdx, 0xfff
    shr rdx, 12
    mov [rbp+L_PAGES], rdx
    mov r8, rdx
    mov ecx, 1                  ; AllocatePages(AllocateMaxAddress,
    mov eax, 0xffffffff         ; (the max address: 4 GiB - 1)
    mov [rbp+L_B], rax
    mov edx, ecx                ; EfiLoaderCode (1), pages, &B): code runs
                                ; from it (firmware that maps LoaderData
                                ; no-execute)
    lea r9, [rbp+L_B]
    call [r15+BS_ALLOCPAGES]
    test rax, rax
    jz .mem
    and qword [rbp+L_B], 0      ; (none allocated)
    lea rsi, [m_mem]
    jmp die
.diskfail:                      ; (in a short jump's reach of the above)
    jmp diskfail
.mem:
    mov rdi, [rbp+L_B]          ; zeros below DATA, as a PC's low memory
    mov ecx, DATA / 8
    xor eax, eax
    rep stosq                   ; (rdi = B + DATA)
    lea rsi, [rbp+L_BUF]        ; the manifest sector to DATA, and on:
    mov ecx, SECT / 8
    rep movsq
    mov rbx, rdi                ; (B + DATA + SECT)
    mov ecx, CHUNKB - SECT      ; the rest of the first chunk, then whole
.load:                          ; chunks to the data's end
    mov rdx, rbx
    add rbx, rcx                ; (the chunk's end)
    call read
    mov al, '.'
    call emit_main
    mov eax, [rbp+L_BUF+MAN_END]
    add rax, [rbp+L_B]
    mov ecx, CHUNKB
    cmp rbx, rax
    jb .load
    mov rbx, [rbp+L_B]
    lea rsi, [eng_image]        ; the engine's 32-bit bytes at B + their org,
    lea rdi, [rbx+ENGINE_ORG]   ; on to exp's constants at VARS + K (zeros
    mov ecx, eng_padded         ; before them); rsi = thunk_image after
    rep movsb
    lea rdi, [rbx+THUNK]        ; the thunks at B + THUNK
    mov cl, thunk_qwords        ; (ecx = 0 after a rep)
    rep movsq
    lea rsi, [rbx+DATA]         ; the boot read's manifest sector and header
    lea rdi, [rbx+VARS-SECT]    ; (its 28 bytes: the constants after them
    mov cl, (SECT + 28) / 4     ; stay)
    rep movsd
    lea rdi, [rbx+THUNK+t_base-thunk_start] ; the thunks' variables, in order:
    mov rax, rbx
    stosq                       ; t_base: B
    lea rax, [emit]
    stosq                       ; t_emit
    lea rax, [finish]
    stosq                       ; t_finish
    mov eax, cs                 ; t_fwsel: the firmware's selectors (the
    stosw                       ; high bits of mov r32, sreg: not stored)
    mov eax, ds
    stosw
    mov eax, ss
    stosw
    mov eax, es
    stosw
%ifdef TALK
    lea rax, [echo64]
    stosq                       ; t_echo
    lea rax, [getc64]
    stosq                       ; t_getc
%endif
    lea rsi, [rbp+L_CTX]        ; putc's context: the consoles, UTF-8 state
    lea rdi, [rbx+CTX]          ; (and without -DTALK the 24 bytes after it
    mov ecx, (FAR_PUTC - CTX) / 8 ; in efi_main's frame: unused there), so
    rep movsq                   ; that rdi = B + FAR_PUTC
    FARPTR thunk_putc           ; FAR_PUTC, FAR_EXIT (and FAR_GETC,
    FARPTR thunk_exit           ; FAR_ECHO) in a row
%ifdef TALK
    FARPTR thunk_getc
    FARPTR thunk_echo
%endif

    ; the GDT: the firmware's, then code32 and data with base B
    sgdt [rbx+THUNK+t_fwgdtr-thunk_start] ; (the firmware's, for thunk_exit)
    mov rsi, [rbx+THUNK+t_fwgdtr-thunk_start+2]
    movzx ecx, word [rbx+THUNK+t_fwgdtr-thunk_start]
    add ecx, 8                  ; its size in bytes (limit + 1), in whole
    and ecx, ~7                 ; descriptors
    lea rdi, [rbx+GDT_AT]
    push rcx
    rep movsb
    pop rcx                     ; ecx = the code32 selector
    mov eax, ebx                ; descriptor bytes: limit 0xFFFFF (4 KiB
    shl eax, 16                 ; units), base B, present, ring 0
    dec ax                      ; (ax = 0 after the shift: 0xFFFF)
    stosd                       ; limit 15:0, base 15:0
    mov edx, ebx                ; the high dword's bytes, from B's (high
    mov dx, 0x9acf              ; byte first): b3 b2 9a cf,
    rol edx, 8                  ; b2 9a cf b3,
    bswap edx                   ; b3 cf 9a b2: base 31:24, G=1 D=1 L=0 and
                                ; limit 19:16, code readable, base 23:16
    xchg eax, edx
    stosd                       ; (the code descriptor's high dword)
    xchg eax, edx
    stosd                       ; the data descriptor: the same, ...
    mov dh, 0x92                ; ... type writable data
    mov [rdi], edx
    lea eax, [rcx+8]            ; the data selector
    mov [rbx+THUNK+t_csel-thunk_start], ecx
    mov [rbx+THUNK+t_dsel-thunk_start], eax
    lea edx, [rcx+16-1]         ; the new GDTR after the GDT: limit, base
    mov [rdi+4], dx             ; B + GDT_AT (rdi: kept by the firmware)
    lea rdx, [rbx+GDT_AT]
    mov [rdi+6], rdx
%ifdef TALK
    ; TPL_NOTIFY for the whole run: the firmware's serial terminal polls
    ; COM1 from a timer event and would take typed bytes before getc; at
    ; this TPL its event waits (until finish), the consoles' calls work
    push rcx
    push rax
    sub rsp, 0x20
    mov ecx, TPL_NOTIFY
    call [r15+BS_RAISETPL]
    mov [rbp+L_TPL], rax
    add rsp, 0x20
    pop rax
    pop rcx
%endif
    cli                         ; interrupts stay off in the engine
    lgdt [rdi+4]
    mov [rbx+THUNK+t_fwrsp-thunk_start], rsp ; the thunks' stack: below the frame
    mov ebx, eax                ; uefi_entry's data selector
    push rcx                    ; far return to code32:uefi_entry
    push qword uefi_entry
    retfq

; ---- read: ecx bytes of the data file to rdx; a short read ends with !disk
read:
    mov r12, rcx                ; (r12: kept by the firmware)
    sub rsp, 0x28
    mov [rbp+L_SIZE], rcx
    mov r8, rdx
    lea rdx, [rbp+L_SIZE]
    mov rcx, [rbp+L_FILE]
    call [rcx+F_READ]
    add rsp, 0x28
    test rax, rax
    jnz .fail
    cmp [rbp+L_SIZE], r12       ; all of it?
    jne .fail
    ret
.fail:
    pop rax                     ; die with efi_main's frame: diskfail
diskfail:
    lea rsi, [m_disk]
; ---- die: print the message at rsi (its code byte ends it), then finish ---
die:
    lodsb
    cmp al, 32
    jb finish
    call emit_main
    jmp die

; ---- finish: al = the exit code; rsp = efi_main's frame, rbp = rsp + FB ----
finish:
    movzx ebx, al
    mov r15, [rbp+L_BS]         ; (the engine's thunks use r15)
%ifndef HALT                    ; (-DHALT, as the legacy engine's: no exit port)
    out 0xf4, al                ; isa-debug-exit: QEMU ends here (2*al + 1)
%endif
%ifdef TALK
    mov rcx, [rbp+L_TPL]        ; the TPL as it was (raised for the engine)
    cmp rcx, -1
    je .tpl
    call [r15+BS_RESTORETPL]
.tpl:
%endif
    sti
    mov rcx, [rbp+L_ST]         ; a real PC: the text stays until a key, or
    mov rcx, [rcx+ST_CONIN]     ; 5 minutes
    xor edx, edx
    call [rcx+IN_RESET]         ; (keys pressed before do not count)
    mov esi, WAIT_10MS
.wait:
    mov rcx, [rbp+L_ST]
    mov rcx, [rcx+ST_CONIN]
    lea rdx, [rbp+L_KEY]
    call [rcx+IN_READKEY]
    test rax, rax
    jz .key
    mov ecx, 10000              ; Stall(10 ms)
    call [r15+BS_STALL]
    dec esi
    jnz .wait
.key:
    mov rcx, [rbp+L_B]
    jrcxz .freed
    mov rdx, [rbp+L_PAGES]
    call [r15+BS_FREEPAGES]
.freed:
    xor eax, eax                ; EFI_SUCCESS after a story, else EFI_ABORTED
    test ebx, ebx
    jz .ret
    mov rax, EFI_ABORTED
.ret:
    add rsp, FRAME
    pop r15
    pop r14
    pop r13
    pop r12
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    ret

; ---- emit: al to COM1 (once the transmitter is free) and to the consoles --
; rdi = the context (CTX_SIZE bytes): the consoles' text outputs, then the
; UTF-8 decoder's state (the code point so far; in the top byte the
; continuation bytes still due).  Keeps rbx, rsi, rdi, rbp, r12-r15 (the
; firmware's calls keep them too); the consoles are called with interrupts
; on, and IF is as it was after.
emit_main:                      ; emit with efi_main's context (rdi: its
    lea rdi, [rbp+L_CTX]        ; callers keep nothing there)
emit:
    call com1
; echo64: emit without its COM1 byte (the screen only: talk.inc's echo)
echo64:
    push rbx
    push rsi
    sub rsp, 0x28               ; shadow space, the UTF-16 string at 0x20
    movzx eax, al
    mov ecx, [rdi+C_UTF8]       ; the decoder
    mov dword [rdi+C_UTF8], 0
    cmp al, 0x80
    jb .unit                    ; ASCII
    cmp al, 0xc0
    jb .cont
    mov edx, 0x0100001f         ; a lead byte: 110xxxxx, one more to come,
    cmp al, 0xe0
    jb .lead
    mov edx, 0x0200000f         ; 1110xxxx, two,
    cmp al, 0xf0
    jb .lead
    mov edx, 0x03000007         ; 11110xxx, three
.lead:
    and eax, edx                ; the byte's payload bits
    and edx, 0xff000000         ; the count
    or edx, eax
    mov [rdi+C_UTF8], edx
    jmp .done
.cont:
    test ecx, 0xff000000        ; a continuation byte nobody asked for
    jz .bad
    mov edx, ecx
    shl edx, 6                  ; the code point's bits (the count shifts
    and edx, 0x00ffffff         ; out: put back below)
    and eax, 0x3f
    or edx, eax
    sub ecx, 0x01000000
    and ecx, 0xff000000
    jz .whole
    or edx, ecx                 ; the count less one
    mov [rdi+C_UTF8], edx
    jmp .done
.whole:
    mov eax, edx
    cmp eax, 0xffff
    jbe .unit                   ; one UTF-16 unit (the consoles: BMP only)
.bad:
    mov eax, 0xfffd             ; the replacement character
.unit:
    mov [rsp+0x20], eax         ; the unit, then a 0
    cmp al, 10
    jne .out
    mov qword [rsp+0x20], 0x000a000d ; CR before LF, then a 0
.out:
    pushfq
    sti
    sub rsp, 8                  ; (16-aligned for the calls)
    xor esi, esi
.con:
    mov rcx, [rdi+rsi*8]
    jrcxz .outs
    lea rdx, [rsp+0x30]         ; the string
    call [rcx+OUT_STRING]
    inc esi
    cmp esi, CON_MAX
    jb .con
.outs:
    add rsp, 8
    popfq
.done:
    add rsp, 0x28
    pop rsi
    pop rbx
    ret

%ifdef TALK
; ---- getc64: ax = the next input byte (al), ah = 1 from a keyboard, 0 COM1 --
; rdi = the context.  Polls COM1's receiver (LSR bit 0; an LSR of 0xFF is no
; UART: the bus) and ReadKeyStroke of each text input found (not ConIn's
; splitter, not the serial terminals), until one has a byte.  Keys: Enter
; (13), Backspace (8), Ctrl-D (4) and 32..126; others are skipped.  Keeps
; rbx, rsi, rdi, rbp, r12-r15.
getc64:
    push rbx
    push rsi
    sub rsp, 0x28               ; shadow space, EFI_INPUT_KEY at 0x20
.poll:
    mov dx, 0x3fd               ; COM1's line status
    in al, dx
    cmp al, 0xff                ; (no UART there)
    je .keys
    test al, 1                  ; a byte received
    jz .keys
    mov dl, 0xf8
    in al, dx                   ; COM1's byte
    movzx eax, al               ; ah = 0: COM1
    jmp .ret
.keys:
    xor esi, esi
.in:
    mov rcx, [rdi+C_IN+rsi*8]
    jrcxz .poll                 ; the list's end: COM1 again
    lea rdx, [rsp+0x20]
    call [rcx+IN_READKEY]       ; EFI_SUCCESS: a key (else EFI_NOT_READY)
    test rax, rax
    jnz .next
    movzx eax, word [rsp+0x22]  ; its UnicodeChar (0: a scan code only)
    cmp eax, 13                 ; Enter
    je .key
    cmp eax, 8                  ; Backspace
    je .key
    cmp eax, 4                  ; Ctrl-D
    je .key
    cmp eax, ' '
    jb .next
    cmp eax, '~'
    ja .next
.key:
    mov ah, 1                   ; from a keyboard
    jmp .ret
.next:
    inc esi
    cmp esi, CON_MAX
    jb .in
    jmp .poll
.ret:
    add rsp, 0x28
    pop rsi
    pop rbx
    ret
%endif

; ---- com1: al to COM1, once its transmitter is free (keeps al) -------------
com1:
    push rax
    mov dx, 0x3fd               ; COM1's line status
.tx:
    in al, dx
    test al, 0x20               ; transmitter holding register empty
    jz .tx                      ; (no UART: the bus reads 0xFF)
    pop rax
    mov dx, 0x3f8
    out dx, al
    ret

guid_loaded_image:              ; EFI_LOADED_IMAGE_PROTOCOL
    dd 0x5b1b31a1
    dw 0x9562, 0x11d2
    db 0x8e, 0x3f, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b
guid_text_out:                  ; EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL
    dd 0x387477c2
    dw 0x69c7, 0x11d2
    db 0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b
guid_text_in:                   ; EFI_SIMPLE_TEXT_INPUT_PROTOCOL
    dd 0x387477c1
    dw 0x69c7, 0x11d2
    db 0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b
guid_device_path:               ; EFI_DEVICE_PATH_PROTOCOL
    dd 0x09576e91
    dw 0x6d3f, 0x11d2
    db 0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b
guid_simple_fs:                 ; EFI_SIMPLE_FILE_SYSTEM_PROTOCOL
    dd 0x964e5b22
    dw 0x6459, 0x11d2
    db 0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b
data_name:
    dw __utf16__("\LLAMA.BIN"), 0
m_disk: db "!disk", E_DISK
m_mem:  db "!RAM", E_MEM
    align 4
relocs:                         ; one base-relocation block with one no-op
    dd 0x1000, 12               ; entry: some loaders want the directory
    dw 0, 0
relocs_end:
    align 16, db 0
eng_image:                      ; section eng's bytes follow (align=16)

; ==== compatibility mode: the engine and its putc/exit ======================
section eng progbits follows=text align=16 vstart=ENGINE_ORG
eng_start:
bits 32
%ifdef TESTPAYLOAD
VARS    equ 0x9200              ; (engine.inc's)
STACK   equ 0x3000
DATA    equ 0x100000
M_NEED  equ -92
M_END   equ -40
; A test of the mechanism and of putc's contract, in place of engine.inc:
; from the documented entry state it prints test_msg through putc, checking
; after every call that each register, xmm0..7 and the x87 stack are as
; they were; then exit 10 ("!" and exit 7 at the first difference).
datacheck:                      ; (the payload has no data check)
engine_start:
    cmp esp, STACK
    jne .bad
    cmp ebp, VARS
    jne .bad
    mov ebx, 0x01234567
    mov ecx, 0x89abcdef
    mov edx, 0x0badf00d
    mov edi, 0xdeadbeef
    mov esi, test_msg
    mov eax, 0x3fc00000         ; 1.5f in every xmm register
    movd xmm0, eax
    pshufd xmm0, xmm0, 0
    movdqa xmm7, xmm0
    fld1                        ; 1.0 on the x87 stack
.l: mov eax, 0x55aa5500
    mov al, [esi]
    test al, al
    jz .e
    push eax
    call putc
    cmp eax, [esp]
    pop eax
    jne .bad
    cmp ebx, 0x01234567
    jne .bad
    cmp ecx, 0x89abcdef
    jne .bad
    cmp edx, 0x0badf00d
    jne .bad
    cmp edi, 0xdeadbeef
    jne .bad
    pcmpeqd xmm7, xmm0          ; all ones where equal
    pmovmskb eax, xmm7
    movdqa xmm7, xmm0
    cmp eax, 0xffff
    jne .bad
    inc esi
    jmp .l
.e: fld1
    fcomip st0, st1             ; the 1.0 from before is still there
    jne .bad
    mov al, 10                  ; (engine.inc's E_DONE)
    jmp exit
.bad:
    mov al, '!'
    call putc
    mov al, 7
    jmp exit
test_msg: db "putc kept every register", 10, 0
%else
%include "engine.inc"
%endif

uefi_entry:                     ; from efi_main's far return: bx = data sel
    mov ds, bx
    mov es, bx
    mov ss, bx
    mov esp, STACK              ; the legacy engine's stack
    mov ebp, VARS
    jmp datacheck               ; (engine.inc: the data check, then the engine)

putc:                           ; al: every register and the FPU/SSE state
    call far [dword FAR_PUTC]   ; kept (thunk_putc)
    ret

exit:                           ; al = the exit code
    jmp far [dword FAR_EXIT]
%ifdef TALK
getc:                           ; al = the next input byte, ah = 1 from a
    call far [dword FAR_GETC]   ; keyboard (thunk_getc); the rest kept
    ret

echo:                           ; al to the screen only (thunk_echo)
    call far [dword FAR_ECHO]
    ret
%endif
stubs_end:
%ifndef TESTPAYLOAD
; exp's constants where engine.inc finds them, at [ebp+K] (VARS + K), as
; sector.asm's sector at VARS has them: zeros up to there (the manifest's and
; the header's places: the loader copies those over them, and no code)
%if VARS + K - ENGINE_ORG < stubs_end - eng_start
  %error "section eng's code runs past VARS + K"
%endif
    times VARS + K - ENGINE_ORG - ($ - $$) db 0
    EXPCONSTS                   ; (engine.inc's)
%endif
eng_end:

; ==== the 64-bit thunks, run from the region (below 4 GiB) ==================
section thunk progbits follows=eng align=16 vstart=THUNK
bits 64
thunk_start:
; putc's far call lands here, in 64-bit mode: its frame (EIP, CS) is at
; B + ESP, since SS's base no longer counts.  getc's and echo's too: r14 =
; the 64-bit routine to call (emit, echo64 or getc64: al in, ax out)
thunk_putc:
    mov r14, [rel t_emit]       ; (r14: kept by the firmware)
%ifdef TALK
    jmp thunk_call
thunk_echo:
    mov r14, [rel t_echo]
    jmp thunk_call
thunk_getc:
    mov r14, [rel t_getc]
thunk_call:
%endif
    mov r12d, esp               ; the engine's ESP (r12: kept by the firmware)
    mov rsp, [rel t_fwrsp]
    pushfq
    push rax
    push rcx
    push rdx
    push rdi
    mov r13, rsp
    sub rsp, 512
    and rsp, -16
    fxsave [rsp]                ; the engine's x87 and SSE state
    mov ds, [rel t_fwsel+2]     ; the firmware's data selectors meanwhile
    mov ss, [rel t_fwsel+4]
    mov es, [rel t_fwsel+6]
    mov rdi, [rel t_base]
    add rdi, CTX
    call r14
    cli                         ; (a firmware call may have turned them on)
%ifdef TALK
    cmp r14, [rel t_getc]
    jne .kept
    mov [r13+24], ax            ; getc's al, ah into the engine's saved eax
.kept:
%endif
    mov ds, [rel t_dsel]
    mov es, [rel t_dsel]
    fxrstor [rsp]
    mov rsp, r13
    pop rdi
    pop rdx
    pop rcx
    pop rax
    pop r15                     ; the engine's flags (IF = 0)
    push qword [rel t_dsel]     ; iretq's frame: SS,
    lea r14, [r12+8]
    push r14                    ; ESP past the far frame,
    push r15                    ; RFLAGS,
    push qword [rel t_csel]     ; CS,
    mov r14, [rel t_base]
    mov r14d, [r14+r12]
    push r14                    ; the return EIP
    iretq                       ; back to compatibility mode

; exit's far jump lands here: al = the code
thunk_exit:
    mov rsp, [rel t_fwrsp]      ; efi_main's frame again (and its rbp: the
    lea rbp, [rsp+FB]           ; engine's ebp is VARS)
    mov ds, [rel t_fwsel+2]
    mov ss, [rel t_fwsel+4]
    mov es, [rel t_fwsel+6]
    lgdt [rel t_fwgdtr]         ; the firmware's GDT (its CS selector is ours)
    jmp [rel t_finish]

    align 8
t_base:   dq 0                  ; B (t_base..t_getc: the loader writes
t_emit:   dq 0                  ; them in this order) emit's and finish's
t_finish: dq 0                  ; addresses in the image
t_fwsel:  dw 0, 0, 0, 0         ; the firmware's CS, DS, SS, ES
%ifdef TALK
t_echo:   dq 0                  ; echo64's and getc64's
t_getc:   dq 0
%endif
t_fwrsp:  dq 0                  ; efi_main's rsp
t_csel:   dq 0                  ; the code32 and data selectors
t_dsel:   dq 0
t_fwgdtr: dw 0
          dq 0
thunk_end:
%if t_emit - t_base != 8 || t_finish - t_emit != 8 || t_fwsel - t_finish != 8
  %error "the thunks' variables are not in the loader's order"
%endif

eng_size   equ eng_end - eng_start
thunk_size equ thunk_end - thunk_start
; the section's bytes in the file, whole 512-byte units (the builder pads)
eng_padded equ (eng_size + 15) & ~15
thunk_qwords equ (thunk_size + 7) / 8 ; (the loader copies whole qwords)
thunk_image equ eng_image + eng_padded
text_file_size equ ((eng_image - text_start) + eng_padded + 8 * thunk_qwords + SECT - 1) & ~(SECT - 1)
text_mem_size equ (text_file_size + 0xfff) & ~0xfff
