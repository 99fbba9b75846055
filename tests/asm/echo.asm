; echo.asm: a test payload for the harnesses' input plumbing (talk.md), not the engine.
; A boot sector that reads bytes from COM1's receiver and from the BIOS keyboard (int 16h),
; whichever has one, and writes each back to COM1 in a visible form: printable ASCII and LF
; as they are, the keyboard's Enter (CR) as LF, any other byte as <XX> in hex.  Byte 0x04
; (EOT, Ctrl-D) from either side ends the run: exit code 10 on port 0xF4 (QEMU's
; isa-debug-exit status 21, the engine's E_DONE), then a halt with interrupts off.  It first prints one '.', the
; "progress dot" of a one-chunk layout, so the harnesses read it as they read the engine.
bits 16
org 0x7c00

COM1 equ 0x3f8
        cli
        xor ax, ax
        mov ds, ax                  ; the hex digits are read through ds
        mov ss, ax
        mov sp, 0x7c00              ; a stack below the sector
        sti                         ; int 16h needs the keyboard interrupt
        mov dx, COM1 + 3            ; line control register
        mov al, 0x03                ; 8 data bits, no parity, 1 stop bit (Bochs resets it to 5 bits)
        out dx, al
        mov dx, COM1 + 1            ; interrupt enable register
        xor al, al                  ; no UART interrupts: the receiver is polled
        out dx, al
        mov al, '.'                 ; the one progress dot
        call putc

poll:   mov dx, COM1 + 5            ; line status register
        in al, dx
        test al, 1                  ; bit 0: a received byte is waiting
        jz .key
        mov dx, COM1
        in al, dx                   ; take it (the UART then has room for the next)
        jmp show
.key:   mov ah, 0x01                ; int 16h 01h: is a keystroke waiting? (ZF=1: no)
        int 0x16
        jz poll
        xor ah, ah                  ; int 16h 00h: take it; al = its ASCII code
        int 0x16
        cmp al, 13                  ; Enter gives CR: a line ends at LF as on COM1
        jne show
        mov al, 10

show:   cmp al, 4                   ; EOT: end of input
        je done
        cmp al, 10                  ; LF as it is
        je .raw
        cmp al, 0x20                ; control bytes in hex
        jb .hex
        cmp al, 0x7e                ; printable ASCII as it is
        ja .hex
.raw:   call putc
        jmp poll
.hex:   mov bl, al                  ; keep the byte for its two digits
        mov al, '<'
        call putc
        mov al, bl
        shr al, 4                   ; high nibble
        call digit
        mov al, bl
        and al, 0x0f                ; low nibble
        call digit
        mov al, '>'
        call putc
        jmp poll

done:   mov al, 10                  ; exit code 10 (engine.inc's E_DONE): finished
        out 0xf4, al                ; QEMU's isa-debug-exit (Bochs logs the write; v86 hooks it)
        cli
.halt:  hlt                         ; halted with interrupts off: every harness sees the end
        jmp .halt

digit:  push bx
        mov bx, hexdig
        xlatb                       ; al = hexdig[al]
        pop bx
        ; fall through: write it

putc:   push dx
        push ax
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20               ; bit 5: the transmit holding register is empty
        jz .wait
        pop ax
        mov dx, COM1
        out dx, al
        pop dx
        ret

hexdig: db "0123456789ABCDEF"

        times 510 - ($ - $$) db 0
        dw 0xaa55
