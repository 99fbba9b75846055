; The encoder and top-p routines alone, at a known org, for tests/unicorn32.py:
; entries at ORG+16 (encode) and ORG+64 (topp); both return to the hlt at ORG.
bits 32
org ORG
stop:
    hlt
    times 16-($-$$) db 0x90
run_encode:                     ; encode as documented in encode.inc
    call encode
    jmp stop
    times 64-($-$$) db 0x90
run_topp:                       ; topp, with eax = the coin's address
    fninit
    fldcw [cw24]                ; the engine's x87: float32 precision
    fld dword [eax]
    call topp
    jmp stop
cw24: dw 0x00FF
%include "encode.inc"
%include "topp.inc"
