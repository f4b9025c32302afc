/*
 * boot2_w25q.S - kpgen's second-stage boot loader (boot2) for the RP2040 on the Raspberry Pi Pico, whose flash is
 * a Winbond W25Q16JV. Licence: kpgen's own (the project's licence); written for kpgen, not taken from the Pico SDK.
 *
 * The boot ROM reads the first 256 bytes of flash into SRAM, checks the CRC-32 in their last four bytes (added by
 * kpgen_uf2.py, run by the Makefile) and runs them. This code is position independent (Thumb, literal pool only).
 * It sets the flash interface (the SSI at 0x18000000, RP2040 Datasheet, section 'SSI') for execute-in-place with the
 * standard 03h read command, which every SPI NOR flash has: 8-bit command, 24-bit address, no dummy cycles, one
 * 32-bit frame per access, SPI clock clk_sys / 4 (31.25 MHz at 125 MHz; the W25Q16JV allows 50 MHz for 03h).
 * Then, entered from the boot ROM (lr = 0), it points VTOR at the vector table after it (0x10000100) and starts
 * its reset handler on its stack; called from code (lr != 0), it returns.
 */
    .syntax unified
    .cpu cortex-m0plus
    .thumb

    .section .boot2, "ax"
    .global kpgen_boot2_entry
    .type kpgen_boot2_entry, %function
    .thumb_func
kpgen_boot2_entry:
    push {lr}
    ldr r3, =0x18000000          @ XIP_SSI
    movs r1, #0
    str r1, [r3, #0x08]          @ SSIENR = 0: the SSI takes a new set-up only while disabled
    movs r1, #4
    str r1, [r3, #0x14]          @ BAUDR: SPI clock = clk_sys / 4
    ldr r1, =0x001F0300          @ CTRLR0: SPI_FRF standard (0), DFS_32 = 31 (32-bit frames), TMOD = 3 (EEPROM read)
    str r1, [r3, #0x00]
    movs r1, #0
    str r1, [r3, #0x04]          @ CTRLR1: NDF = 0, one frame per transfer
    ldr r0, =0x180000F4          @ SPI_CTRLR0
    ldr r1, =0x03000218          @ XIP_CMD = 0x03, INST_L = 2 (8 bits), ADDR_L = 6 (24 bits), TRANS_TYPE = 0, no wait
    str r1, [r0]
    movs r1, #1
    str r1, [r3, #0x08]          @ SSIENR = 1: XIP reads now go out as 03h commands
    pop {r0}
    cmp r0, #0
    beq 1f
    bx r0                        @ called from code: return to it
1:
    ldr r0, =0x10000100          @ the vector table, right after boot2
    ldr r1, =0xE000ED08          @ VTOR
    str r0, [r1]
    ldr r1, [r0]                 @ initial stack pointer
    ldr r2, [r0, #4]             @ reset handler
    msr msp, r1
    bx r2
    .ltorg
    .size kpgen_boot2_entry, . - kpgen_boot2_entry
