/*
 * uart_cmsdk.c - Arm CMSDK APB UART (MPS2 and MPS3 FPGA images: mps2-an385/386/500/505, mps3-an547).
 * Registers: DATA 0x00, STATE 0x04 (bit 0 TX full, bit 1 RX full), CTRL 0x08 (bit 0 TX enable, bit 1 RX
 * enable), BAUDDIV 0x10 (peripheral clock / baud rate, at least 16).
 */
#include "kpgen_console.h"
#include "kpgen_uart.h"

#define UART_REG(off) (*(volatile uint32_t *)(uintptr_t)(KPGEN_UART_BASE + (off)))
#define UART_DATA UART_REG(0x00u)
#define UART_STATE UART_REG(0x04u)
#define UART_CTRL UART_REG(0x08u)
#define UART_BAUDDIV UART_REG(0x10u)

#define STATE_TX_FULL 0x1u
#define STATE_RX_FULL 0x2u

void kpgen_uart_init(void)
{
    uint32_t div = (uint32_t)KPGEN_UART_CLOCK_HZ / (uint32_t)KPGEN_UART_BAUD;
    UART_BAUDDIV = div < 16u ? 16u : div;
    UART_CTRL = 0x3u;
    /* One dummy read: under QEMU 7.2 the first received byte otherwise waits about a second. */
    (void)UART_DATA;
}

void kpgen_uart_putc(uint8_t c)
{
    while ((UART_STATE & STATE_TX_FULL) != 0u) {
    }
    UART_DATA = c;
}

uint8_t kpgen_uart_getc(void)
{
    while ((UART_STATE & STATE_RX_FULL) == 0u) {
    }
    return (uint8_t)(UART_DATA & 0xFFu);
}

/* kpgen_uart_write and kpgen_uart_read, one byte at a time through the two functions above */
KPGEN_UART_BYTEWISE_BLOCKS

void kpgen_uart_flush(void)
{
    /* The CMSDK UART has no "shift register empty" flag: wait for the holding register, then one byte time. */
    volatile uint32_t spin;
    while ((UART_STATE & STATE_TX_FULL) != 0u) {
    }
    for (spin = 0; spin < (uint32_t)KPGEN_UART_CLOCK_HZ / (uint32_t)KPGEN_UART_BAUD * 4u; spin++) {
    }
}
