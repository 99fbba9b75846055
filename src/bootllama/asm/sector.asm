; bootllama: a Llama-2 forward pass in a boot sector and the sectors it loads.
;
; The BIOS loads sector 0, an MBR (boot code in its first 440 bytes, one
; partition entry that the builder fills in, 0x55AA), at 0x7C00 and jumps to it
; in 16-bit real mode.  Sector 0 reads 64 sectors from LBA 1 to 0x7E00: the
; engine's tail sectors, the manifest and the start of the checkpoint, so the
; manifest's fields and the checkpoint header are used in place (BP = VARS).
; Then it checks the PC (CPU, A20, memory: each failure prints a message and
; stops), loads the data area (the manifest, the unmodified llama2.c legacy
; checkpoint, the unmodified tokenizer.bin, the prompt ids, a table of
; per-layer addresses, the RoPE values) to 1 MiB and above and runs llama2.c's
; generate loop: forward(token, pos), greedy argmax (or the forced prompt
; token), print the piece through the BIOS teletype and COM1.
;
; Mode: "unreal" 16-bit real mode.  DS and ES keep 4 GiB limits from a brief
; trip into protected mode, so 32-bit addresses reach the checkpoint while
; BIOS calls (int 10h, int 13h) still work.  A BIOS call may reload segment
; limits, so putc, which follows every BIOS call, ends by redoing unreal.
; Arithmetic: every dot product is SSE scalar mulss/addss (the 486 build:
; x87 fmul/fadd at 24-bit precision), which rounds exactly like run.c's
; gcc -O3 float code; the x87, with precision control set to 24 bits, does
; the element-wise float32 steps (each fadd/fmul/fdiv/fsqrt then rounds like
; one float op); exp is glibc's expf, its double arithmetic in SSE2 (the 486
; build: the x87 at 53-bit precision).  RoPE uses run.c's cosf/sinf values,
; which the builder writes beside the checkpoint (glibc's argument reduction
; would not fit here).
;
; Builds: -DSAMPLING adds run.c's temperature sampling; -DCPU486 runs on an
; i486DX (no SSE, no CPUID); -DHALT ends with hlt only (no isa-debug-exit);
; -DA20OFF switches A20 off first, -DNOA20 skips switching it on (tests).
;
; Memory map (physical)
;   0x00018          IVT entry 6 (#UD; the 486 build: 7, #NM): the CPU message
;   0x00500-0x00FFF  the stack (its top at 0x1000)
;   0x01000          Q: q, then the attention output (dim <= 1024 floats)
;   0x02000          ATT: one head's attention scores (seq_len <= 1024); the
;                    E820 record while the memory is checked
;   0x03000          TAB: exp's 2^(i/32), 32 doubles (then 2.0, whose zero
;                    low bytes the 486 exp uses), exp's scratch
;   0x04000          X: x, the residual stream (dim <= 1024)
;   0x05000-0x06FFF  XB: xb (4 KiB above x; max(dim, hidden_dim) <= 2048)
;   0x07C00          sector 0, then at 0x7E00 the TAIL tail sectors: code,
;                    and nothing the engine writes, in pages 0x7000-0x8FFF
;   0x09000          the manifest sector (LBA MLBA), read in place: its last
;                    128 bytes are the fields at [bp-128..-1] (the last 32,
;                    zeros on the disk, hold the work variables)
;   0x09200 = VARS   the checkpoint header [bp+0..27] (BP)
;   0x0A000-0x0BFFF  HB: hb (hidden_dim <= 2048)
;   0x0C000-0x0DFFF  HB2: hb2, 8 KiB above hb
;   0x10E00-0x18DFF  the disk bounce buffer while loading
;   0x100000         the manifest sector, the checkpoint at 0x100200, the
;                    tokenizer, the prompt ids, the address table, the RoPE
;                    values; the KV cache and the logits where the manifest
;                    says, ending at M_NEED
;
; KV cache: [pos][layer][k | v][kv_dim] floats.
; Registers: BP = VARS for the whole run (mv borrows it and gives it back).
; ECX's high word is 0 from the loader on, so 16-bit loads of CX give whole
; 32-bit counts; DI/BX loads rely on a 0 high word where a comment says so.
; Exit: the byte written to port 0xF4 (QEMU's isa-debug-exit: status
; 2 * byte + 1): 0 the story ended, 2 disk, 3 A20, 4 CPU, 5 memory.

bits 16
org 0x7c00


PRE     equ 0x7E00              ; the boot read: tail sectors, manifest, header
MLBA    equ 10                  ; the manifest's LBA: it lands at 0x9000, the
                                ; page after the code's, so that writes to
                                ; the work variables never hit a page of code
                                ; (QEMU and v86 translate such a page again)
VARS    equ 0x7C00 + MLBA*512 + 512 ; the header, read in place
XBUF    equ 0x4000              ; x, the residual stream (dim <= 1024)
XBBUF   equ XBUF + 0x1000       ; xb (rmsnorm finds x 4 KiB below its output);
                                ; max(dim, hidden_dim) <= 2048, ends at 0x7000
HBBUF   equ 0xA000              ; hb (swiglu finds xb 20 KiB below it)
HB2BUF  equ HBBUF + 0x2000      ; hb2 (swiglu finds it 8 KiB above hb); ends
                                ; at 0xE000: hidden_dim <= 2048
QBUF    equ 0x1000              ; q, then the attention output in its place
ATTBUF  equ 0x2000              ; attention scores of one head (seq <= 1024)
TAB     equ 0x3000              ; exp's table: 2^(i/32), i < 32, then 2.0
SCALE   equ TAB + 256           ; (486 exp) 2^floor(k/32) is built here
KD      equ SCALE + 8           ; (486 exp) kd's bits
BOUNCE  equ 0x10E00             ; the disk bounce buffer (32 KiB): segment
                                ; 0x10E0, one byte from PRE's 0x07E0
CHUNK   equ 64                  ; sectors per int 13h read (32 KiB)
DATA    equ 0x100000            ; the manifest lands here

; manifest fields: the last 128 bytes of the manifest sector, [bp-128..-1]
M_NEED  equ -92     ; memory the run needs: the end of the KV cache/logits
M_STOP  equ -88     ; the id that ends the story (word): BOS (1) for run.c
M_BYTE  equ -86     ; the id of <0x00> (word): 3 for llama2.c's tokenizers,
                    ; 0xFF00 for a tokenizer without byte pieces
M_ENT   equ -84     ; k|v of (pos 0, layer 0); then the running write pointer
M_EMB   equ -80     ; token_embedding_table
M_FR    equ -76     ; the RoPE cos row of pos 0; advanced one row per position
M_FI    equ -72     ; the sin rows minus the cos rows (bytes)
M_TOK   equ -68     ; first token record of tokenizer.bin (file + 4)
M_LOG   equ -64     ; logits buffer
M_PROMPT equ -60    ; prompt ids (dwords, after the BOS), 0-terminated
M_STEPS equ -56     ; run.c's steps
M_TEMP  equ -52     ; temperature (float32)   (for sampling builds)
M_SEED  equ -48     ; rng state (qword)       (for sampling builds)
M_END   equ -40     ; where the loader stops (DATA + chunks * 32 KiB)
M_TAB   equ -36     ; per layer: rms_att wq wk wv k-of-layer wo rms_ffn w1 w3
                    ; w2 addresses; then rms_final, wcls
; checkpoint header, [bp+0..27]
DIM     equ 0
HID     equ 4
NL      equ 8
NH      equ 12
NKV     equ 16
VOC     equ 20
; work variables: the manifest's unused last 32 bytes, zeros from the disk
HS      equ -32     ; head_size (word)
KVDIM   equ -30     ; kv_dim (word)
HS4     equ -28     ; head_size * 4 (dword)
KVDIM4  equ -24     ; kv_dim * 4 (dword)
TSTR    equ -20     ; bytes between positions in the cache (dword)
POS     equ -16     ; pos + 1 (word)
TP      equ -12     ; next entry of the address table (dword)
TMP     equ -8      ; scratch (for sampling builds)
TOKEN   equ -4      ; word, read as a dword (its high word stays 0)

; exit codes (below 32: each also ends its message)
E_DISK  equ 2
E_A20   equ 3
E_CPU   equ 4
E_MEM   equ 5

start:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x1000              ; (the stack grows down from 0x1000)
    mov bp, VARS
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
                                ; (64 sectors: 0x7E00..0xFDFF; the rest is
                                ; checkpoint data, loaded again to DATA)
    jnc init                    ; (the messages sit here, within short jumps)

; ---- the guards' messages: print one, then exit with its code ------------
diskfail:
    mov si, m_disk
    jmp die
cpufail:
    mov si, m_cpu
die:
    lodsb
    cmp al, 32                  ; the code byte ends the message
    jb exit
    call putc
    jmp die
exit:                           ; (in sector 0: a failed first read loaded
%ifndef HALT                    ; nothing else)
    out 0xf4, al                ; isa-debug-exit: QEMU quits with status 2*al+1
%endif
.h: hlt
    jmp .h

init:
    mov byte [si+7], BOUNCE >> 12 ; the same DAP: buffer segment -> BOUNCE
    add byte [si+8], MLBA - 1   ; LBA MLBA: the manifest again, for DATA
    push dx                     ; (DL: the boot drive, for the reads below)
    mov al, 3                   ; (ah = 0: the read's status)
    int 0x10                    ; text mode 3: clears the screen
    mov dx, 0x3fb               ; COM1 line control: 8 data bits, no parity,
    mov al, 3                   ; 1 stop bit, before the first byte out
    out dx, al                  ; (a BIOS may leave the UART at 5 data bits)

; ---- guards: the CPU, A20, the memory; each stops with its message --------
guards:
%ifdef CPU486
    mov dword [7*4], cpufail    ; #NM: no FPU (CR0.EM set) -> the CPU message
    fninit
    fnstsw ax                   ; 0 with an FPU; no FPU leaves ax = 3
    test ax, ax
    jnz cpufail
%else
    mov dword [6*4], cpufail    ; #UD: no CPUID (before the Pentium)
    xor eax, eax
    inc ax
    cpuid
    bt edx, 26                  ; SSE2 (exp's doubles; every CPU with it has
    jnc cpufail                 ; SSE too)
    mov eax, cr4
    or ax, 0x200                ; CR4.OSFXSR: allow SSE
    mov cr4, eax
%endif
    xor ecx, ecx                ; ECX's high word is 0 from here on
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
    pop fs
    inc word [fs:0x7e0e]        ; 0x107DFE: 0x7DFE (our 0xAA55) if A20 is off
    mov si, m_a20
    cmp byte [0x7dfe], 0x55     ; (the inc would have made it 0x56)
    jne die
    xor ebx, ebx                ; E820: from the first record
.e820:
    mov di, ATTBUF
    mov eax, 0xe820
    mov edx, 0x534d4150         ; 'SMAP'
    mov cl, 24
    int 0x15
%ifdef CPU486
    jc .m88                     ; no E820 (or its end): int 15h 88h
%else
    jc .memfail                 ; (every BIOS of an SSE2 PC has E820)
%endif
    dec byte [di+16]            ; type 1: usable RAM (the record is ours)
    jnz .next
    cmp dword [di+2], 0x10
    ja .next                    ; starts above 1 MiB (bytes 2..5 of the base)
    mov eax, [di]
    add eax, [di+8]             ; its end
    jc .ok                      ; (past 4 GiB)
    cmp eax, [bp+M_NEED]
    jae .ok
.next:
    test ebx, ebx
    jnz .e820                   ; the next record; none left:
.memfail:
    mov si, m_mem
    jmp die
%ifdef CPU486
.m88:                           ; a 486's BIOS may predate E820
    mov ah, 0x88
    int 0x15                    ; ax = KiB above 1 MiB (at most 64 MiB)
    jc .memfail
    movzx eax, ax
    add eax, 1024
    shl eax, 10                 ; the end of that memory
    cmp eax, [bp+M_NEED]
    jb .memfail
%endif
.ok:
    pop dx
    mov edi, DATA

; ---- load the data area to DATA, CHUNK sectors at a time -----------------
load:
    mov si, sp
    mov ah, 0x42
    int 0x13
    jc diskfail                 ; (carry: error, or no extended reads)
    add dword [si+8], CHUNK
    mov al, '.'
    call putc                   ; progress, and back to unreal mode
    mov esi, BOUNCE
    mov cx, CHUNK*128           ; ecx = CHUNK*128 dwords (its high word is 0)
    a32 rep movsd
    cmp edi, [bp+M_END]
    jb load
    jmp exptab                  ; (the rest of the engine is in the tail)



; ---- putc: al to COM1 and to the screen (BIOS teletype, CR before LF) ------
; then unreal: give DS and ES 4 GiB limits again, interrupts off
putc:
    pushad
    mov dx, 0x3f8
    out dx, al
    xor bx, bx                  ; page 0
    mov ah, 0x0e                ; teletype (the BIOS keeps ax, bx, dx)
    cmp al, 10
    jne .tty
    mov al, 13                  ; CR before LF on the screen
    int 0x10
    mov al, 10
.tty:
    int 0x10
    cli
    push ds                     ; the real-mode selectors (0) ...
    push es
    mov eax, cr0
    inc ax                      ; PE on (it is off: real mode)
    mov cr0, eax
    mov ds, dx                  ; dx = 0x3F8 (COM1) is also the selector
    mov es, dx                  ; of the flat 4 GiB data descriptor
    dec ax
    mov cr0, eax                ; PE off; the 4 GiB limits stay cached
    pop es                      ; ... back, so the BIOS can save and
    pop ds                      ; restore them
    popad
    ret


; ---- attention: q_h = sum_t softmax(q_h . k_t / sqrtf(hs))_t v_t, then wo --
attention:
    call nextw                  ; esi = k of kv head 0 at t = 0
    lea edi, [QBUF]             ; (ebx's high word is 0: xb from mvw)
    mov cx, [bp+NKV]
.kvh:
    push cx
    mov ax, [bp+NH]
    cwd
    div word [bp+NKV]
    xchg cx, ax                 ; kv_mul query heads share a kv head
.head:
    pushad                      ; esi = k_h, edi = q_h
    mov bx, di                  ; vec = q_h
    mov di, ATTBUF              ; out = att
    mov cx, [bp+HS]
    push dword 4
    pop eax                     ; column stride 4
    mov edx, [bp+TSTR]          ; row stride: the next position
    mov bp, [bp+POS]            ; rows = pos + 1
    pushad
    call mv                     ; att[t] = q_h . k_t
    call softmax_att
    popad
    xchg cx, bp                 ; n = pos+1, rows = head_size
    xchg eax, edx               ; column stride = position stride
    xchg edi, ebx               ; vec = att, out = q_h
    add esi, [VARS+KVDIM4]      ; v of the same kv head
    call mv                     ; q_h[i] = sum_t att[t] v_t[i]
    popad
    add di, [bp+HS4]
    loop .head
    add esi, [bp+HS4]           ; the next kv head
    pop cx
    loop .kvh
    mov bx, QBUF                ; vec = the attention output
    mov cx, [bp+DIM]            ; n = dim
    jmp tox                     ; x += wo @ it

; GDTR: the flat data descriptor is entry 127 (selector 0x3F8, the COM1
; port putc has in dx); entries 0..126 are whatever lies below it and are
; never loaded.  The limit 0x13FF (>= 0x3FF) is also the x87 control word for
; full precision (exceptions masked, round to nearest, 64-bit significand;
; bit 12, infinity control, is ignored since the 387).
gdtr:
cw64:   dw 0x13ff
        dd flat - 0x3f8
flat:   db 0xff                 ; selector 0x3F8: flat 4 GiB data.  Bytes 1..2:
cw24:   db 0xff, 0              ; 0x00FF, the x87 control word for float32
        db 0, 0, 0x92, 0xcf, 0  ; precision (bit 7 is reserved and ignored)
m_disk: db "!disk", E_DISK
m_a20:  db "!A20", E_A20
m_cpu:  db "!CPU", E_CPU
m_mem:  db "!RAM", E_MEM

; ---- the MBR's fields: the builder writes the disk signature and the entry
    times 440-($-$$) db 0       ; boot code ends here
    times 6 db 0                ; disk signature (4 bytes), 2 reserved
    times 64 db 0               ; partition table (entry 0: the data area)
    dw 0xaa55                   ; the tail sectors follow
; ---- after loading: exp's table, the derived dimensions ------------------
exptab:                         ; TAB[i] = 2^(i/32) as doubles, for exp
%ifndef CPU486
    xorps xmm7, xmm7            ; exp keeps the low 48 bits of xmm7 zero
%endif
    fninit                      ; (precision: 64 bits)
    fld1
    fadd st0                    ; 2
    mov cl, 5
.root:
    fsqrt
    loop .root                  ; 2^(1/32), rounded to 64 bits
    fld1
    mov di, TAB
    mov cl, 33                  ; (the 33rd, 2.0, for the 486 exp's SCALE)
.t:
    fst qword [di]              ; rounded to a double: the 64-bit products
    fmul st1                    ; are close enough that every entry is
    add di, byte 8              ; correctly rounded, glibc's table (a test
    loop .t                     ; checks)
    fcompp                      ; empty the x87 stack
    fldcw [cw24]                ; x87 rounds to float32 precision

dims:                           ; the derived dimensions
    mov ax, [bp+DIM]
    cwd
    div word [bp+NH]
    mov [bp+HS], ax             ; head_size = dim / n_heads
    shl ax, 2
    mov [bp+HS4], ax            ; (its high word is one of the zeros)
    mul word [bp+NKV]
    mov [bp+KVDIM4], ax         ; kv_dim * 4 = head_size * 4 * n_kv_heads
    shr ax, 2
    mov [bp+KVDIM], ax
    shl ax, 3                   ; one position's k|v of one layer
    mul word [bp+NL]
    mov [bp+TSTR], ax           ; a position's k|v of all layers
    mov [bp+TSTR+2], dx
    cmp word [bp+VOC+2], 0
    je .v
    neg word [bp+VOC]           ; |vocab| (negative = separate classifier)
.v:
    inc byte [bp+TOKEN]         ; pos 0, token 1: run.c starts from BOS

; ---- generate: run.c's loop -----------------------------------------------
gen:
    out 0xe9, al                ; a beat per forward pass (QEMU's debugcon)
    inc word [bp+POS]           ; pos + 1: the positions in the cache
    call forward
    mov eax, [bp+HS4]
    shr eax, 1
    add [bp+M_FR], eax          ; the next position's rope row
%ifdef SAMPLING
    mov esi, [bp+M_PROMPT]
    a32 lodsd                   ; the prompt's next id, 0 once it is used up
    xchg ax, cx                 ; forced prompt token ...
    jcxz .sample                ; ... or, past the prompt, a sampled one:
    mov [bp+M_PROMPT], esi      ; run.c draws no coin for prompt positions
    jmp .have
.sample:
    mov esi, [bp+M_LOG]
    mov cx, [bp+VOC]
    call sample
%else
    mov esi, [bp+M_LOG]
    mov cx, [bp+VOC]
    fld1
    call divmax                 ; logits / 1 (unchanged); dx = VOC - argmax
                                ; (it leaves 2 x87 entries: the next softmax
                                ; drops them; at most 6 are ever in use)
    sub cx, dx                  ; greedy: the first maximum
    mov esi, [bp+M_PROMPT]
    a32 lodsd                   ; the prompt's next id, 0 once it is used up
    test ax, ax
    jz .gen
    mov [bp+M_PROMPT], esi
    xchg ax, cx                 ; forced prompt token
    jmp .have
%endif
.gen:                           ; a generated token: BOS (run.c), or the
    cmp cx, [bp+M_STOP]         ; model's end of answer, ends the story (a
    je done                     ; chat prompt holds the latter; run.c's
.have:                          ; prompts never hold a BOS after the first)
    xchg cx, [bp+TOKEN]         ; cx = prev, TOKEN = next
    call print
    dec word [bp+M_STEPS]       ; run.c's steps (at least 1) forward passes
    jnz gen
done:
    mov al, 10                  ; run.c's final newline
    call putc
    mov al, 0                   ; exit code 0: the story is over
    jmp exit

; ---- print the piece of TOKEN after prev (cx), as run.c's safe_printf -----
print:
    push cx
    mov esi, [bp+M_TOK]
    mov cx, [bp+TOKEN]
    inc cx                      ; walk to the end of record TOKEN
.walk:
    a32 lodsd                   ; score
    a32 lodsd                   ; len
    add esi, eax
    loop .walk
    sub esi, eax                ; piece start
    xchg cx, ax                 ; cx = len
    pop ax
    dec ax                      ; prev == BOS: strip one leading space
    jnz .nostrip
    a32 cmp byte [esi], ' '
    jne .nostrip
    inc esi
    dec cx
.nostrip:
    mov ax, [bp+TOKEN]
    sub ax, [bp+M_BYTE]         ; <0x00>..<0xFF> are ids M_BYTE..M_BYTE+255:
    test ah, ah                 ; ah = 0 exactly for them (ids below borrow)
    jz .one                     ; al: the raw byte
    loop .all                   ; cx = len - 1: zero exactly for one byte
    a32 lodsb                   ; a one-byte piece
.one:                           ; one byte: only if isprint or isspace
    push ax
    sub al, 9
    cmp al, 5                   ; \t \n \v \f \r: CF
    jb .ok
    sub al, 32-9
    cmp al, 127-32              ; ' '..'~': CF
.ok:
    pop ax                      ; (flags kept)
    jb putc                     ; print it (putc returns for us)
    ret
.all:
    inc cx                      ; len again (0 wrapped to 0xFFFF and back)
    jcxz .ret
.emit:
    a32 lodsb
    call putc
    loop .emit
.ret:
    ret

; ---- forward(TOKEN, POS) -> logits ----------------------------------------
forward:
    mov eax, [bp+M_TAB]
    mov [bp+TP], eax            ; layer 0's addresses
    mov esi, [bp+TOKEN]
    imul esi, [bp+DIM]
    shl esi, 2
    add esi, [bp+M_EMB]
    lea edi, [XBUF]
    mov cx, [bp+DIM]
    a32 rep movsd               ; x = embedding row
    mov cx, [bp+NL]
.layer:
    push cx
    mov di, QBUF                ; (edi is x's end: its high word is 0)
    call rmsnorm                ; xb = rmsnorm(x, rms_att[l]); q = wq @ xb
    db DIM
    mov edi, [bp+M_ENT]         ; this layer's k|v at pos
    call mvw                    ; k = wk @ xb
    db KVDIM
    call mvw                    ; v = wv @ xb
    db KVDIM
    xchg edi, [bp+M_ENT]        ; edi = k; M_ENT = the next layer's k|v
    mov esi, edi
    mov cx, [bp+NKV]
    call rope                   ; rotate k
    lea esi, [QBUF]
    mov cx, [bp+NH]
    call rope                   ; rotate q
    call attention              ; x += wo @ attention(q)
    mov di, HBBUF               ; (edi is x's end again, from wo)
    call rmsnorm                ; xb = rmsnorm(x, rms_ffn[l]); hb = w1 @ xb
    db HID
    mov di, HB2BUF              ; (edi is hb's end)
    call mvw                    ; hb2 = w3 @ xb
    db HID
    call swiglu                 ; x += w2 @ (silu(hb) * hb2)
    pop cx
    loop .layer
    mov edi, [bp+M_LOG]
    call rmsnorm                ; xb = rmsnorm(x, rms_final); logits = wcls @ xb
    db VOC
    ret

; ---- exp: st0 = [edi] = expf(st0), glibc's expf bit for bit ---------------
; glibc's generic expf (since 2.27), in doubles: z = x * 32/ln2, k = z rounded
; to an integer (adding SHIFT = 1.5 * 2^52 leaves k in kd's low bits), r =
; z - k, expf(x) = (float)(2^(k/32) * (C0*r^3 + C1*r^2 + C2*r + 1)) in
; glibc's operation order.  2^(k/32) = TAB[k % 32] * 2^floor(k/32): glibc adds
; k << 47 to its table's bits, the same exact scaling, and y * s rounds once
; either way.  Clobbers eax, edx (the 486 build: ax), [edi].
exp:
%ifdef CPU486                   ; the x87 at 53-bit precision rounds each
    fldcw [cw53]                ; +, -, * like a double
    fcom dword [exlo]
    fnstsw ax
    sahf
    jae .lo                     ; below -104 expf is +0, above 89 +inf; the
    fstp st0                    ; clamp gives the same and keeps k in 16 bits
    fld dword [exlo]
.lo:
    fcom dword [exhi]
    fnstsw ax
    sahf
    jbe .hi
    fstp st0
    fld dword [exhi]
.hi:
    fmul qword [invln2n]        ; z = InvLn2N * xd
    fld qword [shift]
    fadd st1                    ; kd = z + SHIFT (round to nearest integer)
    fst qword [KD]              ; k, in kd's low bits
    fsub qword [shift]          ; kd -= SHIFT
    fsubp st1                   ; r = z - kd
    fld st0
    fmul qword [c0]
    fadd qword [c1]             ; z = C0*r + C1
    fld st1
    fmul st0                    ; r2 = r*r
    fmulp st1                   ; z*r2
    fxch
    fmul qword [c2]
    fld1
    faddp st1                   ; C2*r + 1
    faddp st1                   ; y = z*r2 + y
    mov ax, [KD]
    push bx
    mov bx, ax
    and bx, 31
    shl bx, 3
    fmul qword [bx+TAB]         ; y * 2^(i/32), then the exact scaling
    pop bx
    sar ax, 1
    and al, 0xf0                ; 16 * floor(k/32) (|k| < 2^15 after the clamp)
    add ax, 1023 << 4           ; + the bias: the top 16 bits of 2^floor(k/32)
    mov [SCALE+6], ax           ; (its low 48 bits: 2.0's zeros)
    fmul qword [SCALE]          ; y*s, one rounding as glibc's
    a32 fstp dword [edi]        ; (float) y
    fldcw [cw24]
    a32 fld dword [edi]
    ret
cw53:   dw 0x027f               ; x87: 53-bit precision, exceptions masked
%else
    a32 fstp dword [edi]
    a32 movss xmm0, [edi]
    maxss xmm0, [exlo]          ; below -104 expf is +0, above 89 +inf; the
    minss xmm0, [exhi]          ; clamp gives the same and keeps k in 16 bits
    cvtss2sd xmm0, xmm0         ; xd
    mulsd xmm0, [invln2n]       ; z = InvLn2N * xd
    movsd xmm1, [shift]
    addsd xmm1, xmm0            ; kd = z + SHIFT (round to nearest integer)
    movd eax, xmm1              ; k, from kd's low bits
    subsd xmm1, [shift]         ; kd -= SHIFT
    subsd xmm0, xmm1            ; r = z - kd
    movzx edx, al
    and dl, 31                  ; i = k % 32
    sar ax, 1
    and al, 0xf0                ; 16 * floor(k/32) (|k| < 2^15 after the clamp)
    add ax, 1023 << 4           ; + the bias: the top 16 bits of 2^floor(k/32)
    pinsrw xmm7, eax, 3         ; xmm7 = 2^floor(k/32) (its other bits are 0)
    movsd xmm1, [c0]
    mulsd xmm1, xmm0
    addsd xmm1, [c1]            ; z = C0*r + C1
    movsd xmm2, [c2]
    mulsd xmm2, xmm0
    addsd xmm2, [TAB]           ; y = C2*r + 1 (TAB[0] is 1.0)
    mulsd xmm0, xmm0            ; r2 = r*r
    mulsd xmm0, xmm1            ; z*r2
    addsd xmm0, xmm2            ; y = z*r2 + y
    a32 mulsd xmm0, [TAB+edx*8] ; y * 2^(i/32), then the exact scaling by
    mulsd xmm0, xmm7            ; 2^floor(k/32): y*s, one rounding as glibc's
    cvtsd2ss xmm0, xmm0         ; (float) y
    a32 movss [edi], xmm0
    a32 fld dword [edi]
    ret
%endif
exlo:   dd -104.0
exhi:   dd 89.0
invln2n: dq 0x1.71547652b82fep+5  ; 32/ln2
shift:  dq 0x1.8p52
c0:     dq 0x1.c6af84b912394p-20  ; glibc's expf polynomial, scaled by 32^-3,
c1:     dq 0x1.ebfce50fac4f3p-13  ; 32^-2,
c2:     dq 0x1.62e42ff0c52d6p-6   ; 32^-1

; ---- rope: rotate cx heads at esi by freq_cis row pos ----------------------
rope:
    mov edx, [bp+M_FI]
.head:
    push cx
    mov edi, [bp+M_FR]          ; (edi, not ebx: ebx keeps a low address)
    mov cx, [bp+HS]
    shr cx, 1
.pair:
    a32 fld dword [esi]         ; v0
    a32 fld dword [esi+4]       ; v1 v0
    fld st1                     ; v0 v1 v0
    a32 fmul dword [edi]        ; v0*fcr
    fld st1
    a32 fmul dword [edi+edx]    ; v1*fci
    fsubp                       ; v0*fcr - v1*fci
    a32 fstp dword [esi]
    a32 fmul dword [edi]        ; v1*fcr v0
    fxch
    a32 fmul dword [edi+edx]    ; v0*fci v1*fcr
    faddp                       ; v0*fci + v1*fcr
    a32 fstp dword [esi+4]
    a32 cmpsd                   ; esi += 4, edi += 4 (flags only)
    a32 lodsd                   ; esi += 4
    loop .pair
    pop cx
    loop .head
    ret


; ---- nextw: esi = the next address of the table ---------------------------
nextw:
    mov esi, [bp+TP]
    a32 lodsd
    mov [bp+TP], esi
    xchg esi, eax
    ret

; ---- rmsnorm: xb = w * (ss * x), w the next table address; then mvw ------
; Called like mvw (edi = out, the rows byte after the call): it falls into
; mvw for the matrix that reads xb.
rmsnorm:
    mov si, XBUF
    mov cx, [bp+DIM]
    push cx
    fldz
.ss:
    fld dword [si]
    fmul st0
    faddp                       ; ss += x*x
    lodsd
    loop .ss
    fidiv dword [bp+DIM]
    fadd dword [eps]
    fsqrt
    fld1
    fdivrp                      ; ss = 1 / sqrtf(ss/n + 1e-5)
    call nextw
    mov bx, XBBUF               ; (di is the caller's output pointer)
    pop cx
.o:
    fld dword [bx-0x1000]       ; x[i] (x is 4 KiB below xb)
    fmul st1
    a32 fmul dword [esi]
    fstp dword [bx]
    a32 lodsd
    add bx, byte 4
    loop .o
    fstp st0
                                ; fall into mvw

; ---- mvw: edi = W @ vec, W the next table address --------------------------
; mvw: rows = the VARS word named by the byte after the call, vec = xb,
; n = dim.  mvwb: ax = rows, ebx = vec.  mvwn: also cx = n.
mvw:
    pop si
    lodsb                       ; the byte after the call ...
    push si                     ; ... which we return past
    cbw
    xchg ax, si
    mov ax, [bp+si]             ; rows
    mov ebx, XBBUF              ; (mv compares with this imm32)
xbend   equ $ - 4               ; the dword XBBUF = XBUF + 4 KiB
mvwb:
    mov cx, [bp+DIM]
mvwn:
    push ax
    call nextw
    imul edx, ecx, 4            ; row stride n*4 (ECX's high word is 0)
    push dword 4
    pop eax                     ; column stride 4
    pop bp                      ; rows
                                ; fall into mv

; ---- mv: out[r] (+)= sum_j W[r*rs + j*cs] * vec[j], r < rows, j < n --------
; esi = W, ebx = vec, edi = out, ecx = n, eax = cs, edx = rs (bytes),
; ebp = rows.  Sequential float32 sum from 0.0 in j order: run.c's matmul.
; An output in x (below XBUF + 4 KiB) is added to: x[r] = sum + x[r], the
; residual x += xb of run.c (float addition commutes, bit for bit).
; Returns with bp = VARS again, esi past the last row, ebx ecx eax edx kept.
mv:
    pushad
%ifdef CPU486
    fldz
.col:
    a32 fld dword [esi]
    a32 fmul dword [ebx]        ; (24-bit precision: a float32 product)
    faddp st1
%else
    xorps xmm0, xmm0
.col:
    a32 movss xmm1, [esi]
    a32 mulss xmm1, [ebx]
    addss xmm0, xmm1
%endif
    add esi, eax
    add ebx, byte 4
    loop .col
    popad
    cmp edi, [xbend]            ; below XBUF + 4 KiB ...
    jae .store
    cmp di, XBUF                ; ... and not below x (q, att; edi < 64 KiB
    jb .store                   ; here): x
%ifdef CPU486
    a32 fadd dword [edi]        ; residual
.store:
    a32 fstp dword [edi]
%else
    a32 addss xmm0, [edi]       ; residual
.store:
    a32 movss [edi], xmm0
%endif
    add esi, edx
    a32 scasd                   ; edi += 4 (ES is flat; DF is 0)
    dec bp
    jnz mv
    mov bp, VARS
    ret

; ---- swiglu: xb = hb * (1 / (1 + expf(-hb))) * hb2, then x += w2 @ xb -----
swiglu:
    mov si, HBBUF               ; xb is below hb, hb2 8 KiB above;
    mov cx, [bp+HID]            ; exp's scratch [edi] is past hb2's end
    push cx
.s:
    fld dword [si]
    fld st0
    fchs
    call exp                    ; e val
    fld1
    fadd st1, st0               ; 1 1+e val
    fdivrp                      ; 1/(1+e) val
    fmulp
    fmul dword [si+0x2000]      ; hb2
    fstp dword [si-(HBBUF-XBBUF)] ; xb
    lodsd
    loop .s
    pop cx                      ; n = hidden_dim; ebx is still xb from w3
tox:                            ; x += W @ vec (ebx), n = cx, rows = dim
    mov di, XBUF                ; (edi is hb2's end or in q: high word 0)
    mov ax, [bp+DIM]
    jmp mvwn

; ---- softmax(esi[0..ecx) / st0) in place, as run.c; x87 stack left empty ---
; softmax_att: the attention row att[0..pos] / sqrtf(head_size)
softmax_att:
    lea esi, [ATTBUF]
    mov cx, [bp+POS]            ; pos + 1
    fild word [bp+HS]
    fsqrt                       ; sqrtf(head_size)
softmax:
    call divmax                 ; x /= d; st0 = max
    push cx
    mov edi, esi
    fldz                        ; sum
.p2:
    a32 fld dword [edi]
    fsub st2                    ; x - max, rounded to float32
    call exp                    ; x = expf(x - max)
    faddp                       ; sum += x
    a32 scasd
    loop .p2
    pop cx
    call divmax                 ; x /= sum
%ifdef CPU486
    fninit                      ; drop max, sum, max, d (and argmax's two)
    fldcw [cw24]
%else
    emms                        ; drop max, sum, max, d (and argmax's two)
%endif
    ret

; ---- divmax: x[i] /= st0 (> 0) for the cx floats at esi (kept), in place -
; returns st0 = the maximum of the quotients, st1 = the divisor, dx = cx -
; the index of the first maximum.  The maximum is tracked on the dividends
; and divided once at the end: rounding x/d is monotonic in x for d > 0, so
; that is the largest rounded quotient, run.c's max.  Only argmax reads the
; index, and there d = 1, where x/d == x.
divmax:
    push esi
    push cx
    a32 fld dword [esi]         ; max = x[0]
    mov dx, cx
.l:
    a32 fld dword [esi]
%ifdef CPU486
    fcom st1
    fnstsw ax
    sahf
%else
    fcomi st0, st1
%endif
    jbe .n                      ; not greater (or NaN): keep the first max
    fst st1
    mov dx, cx
.n:
    fdiv st2
    a32 fstp dword [esi]        ; x /= d
    a32 lodsd                   ; esi += 4 (eax is free)
    loop .l
    fdiv st0, st1               ; max / d
    pop cx
    pop esi
    ret

eps:    dd 1e-5

%ifdef SAMPLING
%include "sample.inc"
%endif
    align 512, db 0
engine_end:
TAIL    equ (engine_end - $$) / 512 - 1   ; sectors after this one
%if PRE + TAIL*512 > 0x7C00 + MLBA*512
  %error "the engine's tail sectors run into the manifest's sector"
%endif
