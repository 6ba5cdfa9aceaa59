/* Multiboot (v1) entry of the lab guest: QEMU's -kernel loads it in 32-bit protected mode. */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0x00000003           /* page-aligned modules, memory info */
        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

        .section .text
        .globl _start
_start:
        mov $stack_top, %esp
        push %ebx                           /* multiboot info (command line) */
        call guest_main
1:      hlt
        jmp 1b

        .section .note.GNU-stack, "", @progbits
        .section .bss
        .align 16
        .space 16384
stack_top:
