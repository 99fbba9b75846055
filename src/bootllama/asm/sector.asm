; bootllama: a Llama-2 forward pass in one 512-byte boot sector.
;
; The BIOS loads this sector at 0x7C00 and jumps to it in 16-bit real mode.
; The sector reads the data area of the disk (LBA 1 onwards: a one-sector
; manifest, the unmodified llama2.c legacy checkpoint, the unmodified
; tokenizer.bin) to 1 MiB and above, then runs llama2.c's generate loop:
; forward(token, pos), greedy argmax (or, with -DSAMPLING, run.c's
; temperature sampler), print the piece through the BIOS and COM1.
;
; Mode: "unreal" 16-bit real mode.  DS and ES keep 4 GiB limits from a brief
; trip into protected mode, so 32-bit addresses reach the checkpoint while
; BIOS calls (int 10h, int 13h) still work.  A BIOS call may reload segment
; limits, so every BIOS call is followed by `unreal`.
; Arithmetic: SSE scalar (movss/mulss/addss) for every dot product, which
; rounds exactly like run.c's gcc -O3 float code; the x87, with precision
; control set to 24 bits, for the element-wise float32 steps (each fadd/fmul/
; fdiv/fsqrt then rounds like one float op) and for exp (f2xm1/fscale, whose
; precision control does not apply).
;
; Memory map (physical)
;   0x00600          BP: variables.  [bp-128..-1] manifest fields, [bp+0..27]
;                    checkpoint header (both copied from the disk), [bp+28..]
;                    work variables
;   0x07000          top of the stack (grows down through page 0x6000, away
;                    from the code page 0x7000 so QEMU's TCG need not
;                    re-translate the code on stack writes)
;   0x07C00          this sector
;   0x08000-0x0FFFF  disk bounce buffer while loading; then activations:
;                    X 0x8000 (dim <= 1024), XB 0x9000 (<= 2048 floats),
;                    HB 0xB000 with HB2 right after it (hidden <= 2048),
;                    ATT 0xF000 (seq_len <= 1024)
;   0x100000         manifest sector, then checkpoint at 0x100200, tokenizer,
;                    prompt ids; KV cache and logits where the manifest says
;
; Registers: BP = variables for the whole run; everything else is scratch.

bits 16
org 0x7c00

VARS    equ 0x0600
XBUF    equ 0x9000
QBUF    equ 0xA000
XBBUF   equ 0xB000
HBBUF   equ 0xD000
ATTBUF  equ 0xF000
BOUNCE  equ 0x9000
CHUNK   equ 64                  ; sectors per int 13h read (32 KiB)
DATA    equ 0x100000            ; LBA 1 lands here
CKPT    equ DATA + 512          ; the checkpoint header

; manifest fields: the last 128 bytes of the manifest sector, [bp-128..-1]
M_CUR   equ -128    ; 12 dword cursors: rms_att wq wk wv wo rms_ffn w1 w3 w2
                    ; rms_final wcls kv   (restored before every token)
NCUR    equ 12
M_EMB   equ -80     ; token_embedding_table
M_FR    equ -76     ; freq_cis_real
M_FI    equ -72     ; freq_cis_imag minus freq_cis_real (bytes)
M_TOK   equ -68     ; first token record of tokenizer.bin (file + 4)
M_LOG   equ -64     ; logits buffer
M_PROMPT equ -60    ; prompt ids (dwords, after the BOS), 0-terminated
M_STEPS equ -56     ; run.c's steps
M_TEMP  equ -52     ; temperature (float32)
M_SEED  equ -48     ; rng state (qword)
M_NSECT equ -40     ; sectors to load (LBA 1 .. NSECT)
; checkpoint header, [bp+0..27]
DIM     equ 0
HID     equ 4
NL      equ 8
NH      equ 12
NKV     equ 16
VOC     equ 20
; work variables
CUR     equ 28      ; 12 working cursors
KV      equ CUR+11*4
HS      equ 76      ; head_size
KVDIM   equ 80
QKVSZ   equ 84      ; bytes of one position's q|k|v for one layer
TSTR    equ 88      ; bytes between positions in the q|k|v cache
SQRTHS  equ 92      ; sqrtf(head_size)
POS     equ 96
TOKEN   equ 100
ROWS    equ 104
SLOT    equ 108     ; address of the next cursor to consume
QCUR    equ 112     ; this layer's q|k|v at pos
LCNT    equ 116
TMP     equ 120
HS4     equ 124
KVMUL   equ -36
KVDIM4  equ -32

start:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    mov bp, VARS
    push dword 0                ; DAP for the engine's own tail sectors
    push dword 1
    push word 0
    push word tail
    push word TAIL
    push word 16
    mov si, sp
    mov ah, 0x42
    int 0x13
    jc fail
    mov ax, 3
    int 0x10                    ; text mode 3: clears the screen
    mov eax, cr4
    or ax, 0x200                ; CR4.OSFXSR: allow SSE
    mov cr4, eax
    lgdt [gdt]
    xor edi, edi
    mov di, 1+TAIL
    push edi                    ; LBA counter lives in [sp]
    mov edi, DATA
    jmp load

cw:     dw 0x007f, 0x037f       ; x87 control: float32 precision; full
eps:    dd 1e-5
gdt:    dw gdt_end - gdt - 1    ; GDTR in the unused null descriptor
        dd gdt
        dw 0
        db 0xff, 0xff, 0, 0, 0, 0x92, 0xcf, 0   ; 0x08: flat 4 GiB data
gdt_end:

; ---- putc: al to COM1 and to the screen (BIOS teletype, CR before LF) ------
putc:
    pushad
    mov dx, 0x3f8
    out dx, al
    cmp al, 10
    jne .tty
    mov ax, 0x0e0d
    int 0x10
    mov al, 10
.tty:
    mov ah, 0x0e
    xor bx, bx
    int 0x10
    popad
; ---- unreal: give DS and ES 4 GiB limits, interrupts off -------------------
unreal:
    pushad
    cli
    mov eax, cr0
    inc ax                      ; PE on (it is off: real mode)
    mov cr0, eax
    push 8
    pop ds
    push 8
    pop es
    dec ax
    mov cr0, eax                ; PE off; the 4 GiB limits stay cached
    push ss
    pop ds                      ; selectors back to 0 so the BIOS can
    push ss
    pop es                      ; save and restore them
    popad
    ret

fail:
    mov al, '!'
    call putc
    out 0xf4, al                ; isa-debug-exit: QEMU quits with status 67
.h: hlt
    jmp .h

%ifndef NOPAD
    times 510-($-$$) db 0
%endif
    dw 0xaa55
tail:

; ---- load LBA 1..NSECT to DATA, CHUNK sectors at a time -------------------
load:
    pop ebx
    push ebx
    push dword 0                ; DAP: LBA high
    push ebx                    ; LBA low
    push word BOUNCE >> 4       ; buffer segment
    push word 0                 ; buffer offset
    push word CHUNK             ; sector count
    push word 16                ; DAP size
    mov si, sp
    mov ah, 0x42                ; extended read; DL is still the boot drive
    int 0x13
    lea sp, [si+16]
    jc fail                     ; also taken if the BIOS lacks extended reads
    mov al, '.'
    call putc                   ; progress, and back to unreal mode
    mov esi, BOUNCE
    mov ecx, CHUNK*128
    a32 rep movsd
    pop ebx
    add ebx, CHUNK
    push ebx
    cmp ebx, [es:dword DATA+512+M_NSECT]
    jbe load
    pop ebx

    ; variables: the manifest's last 128 bytes and the 28-byte header
    mov esi, CKPT-128
    mov edi, VARS-128
    mov cl, 128+28              ; ECX is 0 after the rep movsd
    a32 rep movsb
    fninit
    fldcw [cw]                  ; x87 rounds to float32 precision

    ; derived dimensions
    mov eax, [bp+DIM]
    cdq
    idiv dword [bp+NH]
    mov [bp+HS], eax            ; head_size = dim / n_heads
    shl eax, 2
    mov [bp+HS4], eax
    mov eax, [bp+NH]
    cdq
    idiv dword [bp+NKV]
    mov [bp+KVMUL], eax         ; kv_mul = n_heads / n_kv_heads
    mov eax, [bp+HS]
    fild dword [bp+HS]
    fsqrt
    fstp dword [bp+SQRTHS]      ; sqrtf(head_size)
    imul eax, [bp+NKV]
    mov [bp+KVDIM], eax         ; kv_dim = head_size * n_kv_heads
    shl eax, 2
    mov [bp+KVDIM4], eax
    shl eax, 1
    mov [bp+QKVSZ], eax         ; k|v of one layer at one position: 2 kv_dim * 4
    imul eax, [bp+NL]
    mov [bp+TSTR], eax          ; a position's q|k|v for all layers
    mov eax, [bp+VOC]
    cdq
    xor eax, edx
    sub eax, edx
    mov [bp+VOC], eax           ; |vocab| (negative = separate classifier)

    xor eax, eax
    mov [bp+POS], eax
    inc ax
    mov [bp+TOKEN], eax         ; run.c starts from BOS at pos 0

; ---- generate: run.c's loop -----------------------------------------------
gen:
    call forward
    inc dword [bp+POS]
    mov esi, [bp+M_PROMPT]
    a32 lodsd                   ; the prompt's next id, 0 once it is used up
    test eax, eax
    jz .sample
    mov [bp+M_PROMPT], esi
    jmp .have
.sample:
    call argmax
.have:
    cmp eax, 1                  ; BOS ends the story
    je done
    xchg eax, [bp+TOKEN]        ; eax = prev, TOKEN = next
    call print
    mov eax, [bp+POS]
    cmp eax, [bp+M_STEPS]
    jb gen
done:
    mov al, 10
    call putc
    mov al, 0
%ifndef HALT
    out 0xf4, al                ; isa-debug-exit: QEMU quits with status 1
%endif
.h: hlt
    jmp .h

; ---- print the piece of TOKEN after prev (eax), as run.c's safe_printf ----
print:
    push eax
    mov ecx, [bp+TOKEN]
    mov esi, [bp+M_TOK]
    inc cx                      ; walk to the end of record TOKEN
.walk:
    a32 lodsd                   ; score
    a32 lodsd                   ; len
    add esi, eax
    loop .walk
    sub esi, eax                ; piece start
    xchg ecx, eax               ; ecx = len
    pop eax
    dec eax                     ; prev == BOS: strip one leading space
    jnz .nostrip
    cmp byte [esi], ' '
    jne .nostrip
    inc esi
    dec cx
.nostrip:
    mov eax, [bp+TOKEN]
    sub ax, 3                   ; <0x00>..<0xFF> are ids 3..258
    cmp ax, 256
    jae .piece
    mov [bp+TMP], al            ; the raw byte
    lea esi, [bp+TMP]
    mov cl, 1
.piece:
    cmp cx, 1                   ; one byte: only if isprint or isspace
    jne .out
    mov al, [esi]
    sub al, 9
    cmp al, 5
    jb .out                     ; \t \n \v \f \r
    sub al, 32-9
    cmp al, 95
    jae .ret                    ; not in ' '..'~'
.out:
    jcxz .ret
.emit:
    a32 lodsb
    call putc
    loop .emit
.ret:
    ret

; ---- forward(TOKEN, POS) -> logits ----------------------------------------
forward:
    lea si, [bp+M_CUR]
    lea di, [bp+CUR]
    mov cx, NCUR
    rep movsd                   ; restart every weight cursor at layer 0
    mov eax, [bp+TOKEN]
    mul dword [bp+DIM]
    shl eax, 2
    add eax, [bp+M_EMB]
    xchg esi, eax
    mov edi, XBUF
    mov ecx, [bp+DIM]
    a32 rep movsd               ; x = embedding row
    mov ax, [bp+NL]
    mov [bp+LCNT], ax
.layer:
    lea eax, [bp+CUR]
    mov [bp+SLOT], eax
    call rmsnorm                ; xb = rmsnorm(x, rms_att[l]); ebx = xb
    mov edi, QBUF
    mov edx, [bp+DIM]
    call mvw                    ; q = wq @ xb
    mov eax, [bp+POS]
    mul dword [bp+TSTR]
    add eax, [bp+KV]
    xchg edi, eax               ; k|v of (pos, layer) go to the cache
    push edi
    mov edx, [bp+KVDIM]
    call mvw                    ; k = wk @ xb
    mov edx, [bp+KVDIM]
    call mvw                    ; v = wv @ xb
    mov esi, QBUF
    mov cx, [bp+NH]
    call rope                   ; rotate q
    pop esi
    mov cx, [bp+NKV]
    call rope                   ; rotate k
    call attention              ; q = attention output; ebx = q
    mov edi, HBBUF
    mov edx, [bp+DIM]
    call mvw                    ; hb = wo @ q
    call resid                  ; x += hb
    call rmsnorm                ; xb = rmsnorm(x, rms_ffn[l])
    mov edi, HBBUF
    mov edx, [bp+HID]
    call mvw                    ; hb = w1 @ xb
    mov edx, [bp+HID]
    call mvw                    ; hb2 = w3 @ xb (right after hb)
    call swiglu                 ; xb = silu(hb) * hb2; ebx = xb
    mov edi, HBBUF
    mov edx, [bp+DIM]
    mov ecx, [bp+HID]
    call mvwn                   ; hb = w2 @ xb
    call resid                  ; x += hb
    mov eax, [bp+QKVSZ]
    add [bp+KV], eax            ; next layer's k|v
    dec word [bp+LCNT]
    jnz .layer
    call rmsnorm                ; xb = rmsnorm(x, rms_final)
    mov edi, [bp+M_LOG]
    mov edx, [bp+VOC]
                                ; logits = wcls @ xb  (falls into mvw)

; ---- mvw: edi = W @ ebx, W from the next cursor, edx rows, n = dim ---------
mvw:
    mov ecx, [bp+DIM]
mvwn:
    call nextw
    push edx
    mov edx, ecx
    shl edx, 2                  ; row stride n*4
    xor eax, eax
    mov al, 4                   ; column stride 4
    pop ebp                     ; rows
    call mv
savew:
    mov eax, [bp+SLOT]
    mov [eax-4], esi            ; the cursor now points at the next layer's
    ret

nextw:
    mov eax, [bp+SLOT]
    add dword [bp+SLOT], 4
    mov esi, [eax]
    ret

; ---- mv: out[r] = sum_j W[r*rs + j*cs] * vec[j], r < rows, j < n ----------
; esi = W, ebx = vec, edi = out, ecx = n, eax = cs, edx = rs (bytes),
; ebp = rows.  Sequential float32 sum from 0.0 in j order: run.c's matmul.
; Returns with bp = VARS again, esi past the last row, ebx kept.
mv:
.row:
    push esi
    push ebx
    push ecx
    xorps xmm0, xmm0
.col:
    movss xmm1, [esi]
    mulss xmm1, [ebx]
    addss xmm0, xmm1
    add esi, eax
    add ebx, 4
    loop .col
    pop ecx
    pop ebx
    pop esi
    add esi, edx
    movss [edi], xmm0
    add edi, 4
    dec ebp
    jnz .row
    mov bp, VARS
    ret

; ---- rmsnorm: xb = w * (x / sqrt(mean(x*x) + 1e-5)), w = next cursor ------
rmsnorm:
    mov si, XBUF
    mov cx, [bp+DIM]
    fldz
.ss:
    fld dword [si]
    fmul st0
    faddp
    lodsd
    loop .ss
    fidiv dword [bp+DIM]
    fadd dword [eps]
    fsqrt
    fld1
    fdivrp                      ; ss = 1 / sqrtf(ss)
    call nextw
    mov ebx, XBUF
    mov edi, XBBUF
    mov cx, [bp+DIM]
.o:
    fld dword [bx]
    fmul st1
    a32 fmul dword [esi]
    fstp dword [di]
    add bx, 4
    a32 lodsd
    scasd
    loop .o
    fstp st0
    mov ebx, XBBUF
    jmp savew

; ---- resid: x += hb --------------------------------------------------------
resid:
    mov si, HBBUF
    mov di, XBUF
    mov cx, [bp+DIM]
.r:
    fld dword [si]
    fadd dword [di]
    fstp dword [di]
    lodsd
    scasd
    loop .r
    ret

; ---- swiglu: xb = hb * (1 / (1 + expf(-hb))) * hb2 -------------------------
swiglu:
    mov si, HBBUF
    mov edi, XBBUF
    mov ebx, edi
    mov cx, [bp+HID]
    mov dx, cx
    shl dx, 2                   ; hb2 - hb
.s:
    fld dword [si]
    fchs
    call exp
    fld1
    faddp
    fld1
    fdivrp
    fmul dword [si]
    push si
    add si, dx
    fmul dword [si]
    pop si
    fstp dword [di]
    lodsd
    scasd
    loop .s
    ret

; ---- exp: st0 = e^st0, rounded to float32 ----------------------------------
exp:
    fldcw [cw+2]                ; full precision inside
    fldl2e
    fmulp
    fld st0
    frndint
    fsub st1, st0
    fxch
    f2xm1
    fld1
    faddp
    fscale
    fstp st1
    fstp dword [bp+TMP]         ; round to float32 as expf returns it
    fldcw [cw]
    fld dword [bp+TMP]
    ret

; ---- rope: rotate cx heads at esi by freq_cis row pos ----------------------
rope:
    mov eax, [bp+POS]
    mul dword [bp+HS]
    shl eax, 1                  ; pos * head_size/2 floats
    add eax, [bp+M_FR]
    mov edx, [bp+M_FI]
.head:
    push cx
    mov ebx, eax
    mov cx, [bp+HS]
    shr cx, 1
.pair:
    a32 fld dword [ebx]         ; fcr
    a32 fld dword [ebx+edx]     ; fci
    a32 fld dword [esi]         ; v0
    fmul st1                    ; v0*fci
    a32 fld dword [esi+4]       ; v1
    fmul st3                    ; v1*fcr
    faddp                       ; v0*fci + v1*fcr
    a32 fld dword [esi]
    fmul st3                    ; v0*fcr
    a32 fld dword [esi+4]
    fmul st3                    ; v1*fci
    fsubp                       ; v0*fcr - v1*fci
    a32 fstp dword [esi]
    a32 fstp dword [esi+4]
    fcompp                      ; drop fcr, fci
    add esi, 8
    add ebx, 4
    loop .pair
    pop cx
    loop .head
    ret

; ---- attention: q_h = sum_t softmax(q_h . k_t / sqrtf(hs))_t v_t ----------
attention:
    mov esi, [bp+KV]            ; k of kv head 0 at t = 0
    mov ebx, QBUF
    xor ecx, ecx                ; h
.head:
    pushad
    mov edi, ATTBUF
    mov ecx, [bp+HS]
    xor eax, eax
    mov al, 4
    mov edx, [bp+TSTR]
    mov ebp, [bp+POS]
    inc ebp
    pushad
    call mv                     ; att[t] = q_h . k_t
    mov esi, ATTBUF
    mov ecx, [bp+POS]
    inc ecx
    fld dword [bp+SQRTHS]
    call softmax
    popad
    xchg ecx, ebp               ; n = pos+1, rows = head_size
    xchg eax, edx               ; column stride = position stride
    mov edi, ebx                ; the output overwrites q_h
    mov ebx, ATTBUF
    add esi, [VARS+KVDIM4]      ; v of the same kv head
    call mv                     ; q_h[i] = sum_t att[t] v_t[i]
    popad
    add ebx, [bp+HS4]
    inc cx
    mov ax, cx
    div byte [bp+KVMUL]
    test ah, ah
    jnz .same
    add esi, [bp+HS4]           ; every kv_mul heads, the next kv head
.same:
    cmp cx, [bp+NH]
    jb .head
    mov ebx, QBUF
    ret

; ---- softmax(esi[0..ecx) / st0) in place, as run.c ------------------------
softmax:
    push esi
    push ecx
    a32 fld dword [esi]
    fdiv st1                    ; max starts at x[0]/d
.p1:
    a32 fld dword [esi]
    fdiv st2
    a32 fst dword [esi]         ; x /= d
    fcomi st0, st1
    fcmovb st0, st1
    fstp st1                    ; max = max(max, x)
    a32 lodsd
    loop .p1
    pop ecx
    pop esi
    push esi
    push ecx
    fldz                        ; sum
.p2:
    a32 fld dword [esi]
    fsub st2                    ; x - max, rounded to float32
    call exp
    a32 fst dword [esi]
    faddp                       ; sum += e
    a32 lodsd
    loop .p2
    pop ecx
    pop esi
.p3:
    a32 fld dword [esi]
    fdiv st1
    a32 fstp dword [esi]        ; x /= sum
    a32 lodsd
    loop .p3
    fcompp
    fstp st0
    ret

; ---- argmax over logits: first maximum wins --------------------------------
argmax:
    mov esi, [bp+M_LOG]
    mov ecx, [bp+VOC]
    xor ebx, ebx
    xor edx, edx
    movss xmm1, [esi]
.a:
    movss xmm0, [esi]
    comiss xmm0, xmm1
    jbe .n
    movss xmm1, xmm0
    mov edx, ebx
.n:
    add esi, 4
    inc ebx
    loop .a
    xchg eax, edx
    ret

    align 512, db 0
engine_end:
TAIL    equ (engine_end - tail) / 512
