/*
 * uart_pl011.c - Arm PrimeCell PL011 UART (RP2040 UART0: Raspberry Pi Pico). Registers: DR 0x000, FR 0x018
 * (bit 3 BUSY, bit 4 RXFE, bit 5 TXFF), IBRD 0x024, FBRD 0x028, LCR_H 0x02C (bits 5-6 WLEN, bit 4 FEN),
 * CR 0x030 (bit 0 UARTEN, bit 8 TXE, bit 9 RXE). Divisor = clock / (16 x baud) in 16.6 fixed point; LCR_H
 * is written after IBRD and FBRD, which latches them. Not emulated by QEMU 7.2 (as an RP2040): built, not run.
 */
#include "kpgen_console.h"
#include "kpgen_uart.h"

#define UART_REG(off) (*(volatile uint32_t *)(uintptr_t)(KPGEN_UART_BASE + (off)))
#define UART_DR UART_REG(0x000u)
#define UART_FR UART_REG(0x018u)
#define UART_IBRD UART_REG(0x024u)
#define UART_FBRD UART_REG(0x028u)
#define UART_LCR_H UART_REG(0x02Cu)
#define UART_CR UART_REG(0x030u)

#define FR_BUSY 0x08u
#define FR_RXFE 0x10u
#define FR_TXFF 0x20u

void kpgen_uart_init(void)
{
    /* 8 x clock / baud, rounded: 64 x the divisor, plus one bit for rounding the 6-bit fraction. */
    uint32_t div8 = (uint32_t)(8ull * (uint64_t)KPGEN_UART_CLOCK_HZ / (uint64_t)KPGEN_UART_BAUD);
    uint32_t ibrd = div8 >> 7;
    uint32_t fbrd = ((div8 & 0x7Fu) + 1u) / 2u;
    if (ibrd == 0u) {
        ibrd = 1u;
        fbrd = 0u;
    } else if (ibrd >= 0xFFFFu) {
        ibrd = 0xFFFFu;
        fbrd = 0u;
    }
    UART_CR = 0u;
    UART_IBRD = ibrd;
    UART_FBRD = fbrd;
    UART_LCR_H = (3u << 5) | (1u << 4); /* 8 bits, FIFOs on */
    UART_CR = (1u << 0) | (1u << 8) | (1u << 9);
}

void kpgen_uart_putc(uint8_t c)
{
    while ((UART_FR & FR_TXFF) != 0u) {
    }
    UART_DR = c;
}

uint8_t kpgen_uart_getc(void)
{
    while ((UART_FR & FR_RXFE) != 0u) {
    }
    return (uint8_t)(UART_DR & 0xFFu);
}

/* kpgen_uart_write and kpgen_uart_read, one byte at a time through the two functions above */
KPGEN_UART_BYTEWISE_BLOCKS

void kpgen_uart_flush(void)
{
    while ((UART_FR & FR_BUSY) != 0u) {
    }
}
