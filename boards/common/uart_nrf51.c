/*
 * uart_nrf51.c - Nordic nRF51 UART (QEMU microbit; also the nRF52's legacy UART). Registers: TASKS_STARTRX
 * 0x000, TASKS_STARTTX 0x008, EVENTS_RXDRDY 0x108, EVENTS_TXDRDY 0x11C, ENABLE 0x500 (4), PSELTXD 0x50C,
 * PSELRXD 0x514, RXD 0x518, TXD 0x51C, BAUDRATE 0x524. The receiver holds six bytes.
 * QEMU ignores every write before ENABLE; the pins and baud rate are written first anyway, as the chip wants
 * them set while the UART is disabled.
 */
#include "kpgen_console.h"
#include "kpgen_uart.h"

#define UART_REG(off) (*(volatile uint32_t *)(uintptr_t)(KPGEN_UART_BASE + (off)))
#define TASKS_STARTRX UART_REG(0x000u)
#define TASKS_STARTTX UART_REG(0x008u)
#define EVENTS_RXDRDY UART_REG(0x108u)
#define EVENTS_TXDRDY UART_REG(0x11Cu)
#define UART_ENABLE UART_REG(0x500u)
#define PSELTXD UART_REG(0x50Cu)
#define PSELRXD UART_REG(0x514u)
#define UART_RXD UART_REG(0x518u)
#define UART_TXD UART_REG(0x51Cu)
#define UART_BAUDRATE UART_REG(0x524u)

void kpgen_uart_init(void)
{
    PSELTXD = (uint32_t)KPGEN_UART_TX_PIN;
    PSELRXD = (uint32_t)KPGEN_UART_RX_PIN;
    UART_BAUDRATE = (uint32_t)KPGEN_UART_BAUD_REG;
    UART_ENABLE = 4u;
    EVENTS_TXDRDY = 0u;
    EVENTS_RXDRDY = 0u;
    TASKS_STARTTX = 1u;
    TASKS_STARTRX = 1u;
}

void kpgen_uart_putc(uint8_t c)
{
    UART_TXD = c;
    while (EVENTS_TXDRDY == 0u) {
    }
    EVENTS_TXDRDY = 0u;
}

uint8_t kpgen_uart_getc(void)
{
    while (EVENTS_RXDRDY == 0u) {
    }
    EVENTS_RXDRDY = 0u;
    return (uint8_t)(UART_RXD & 0xFFu);
}

/* kpgen_uart_write and kpgen_uart_read, one byte at a time through the two functions above */
KPGEN_UART_BYTEWISE_BLOCKS

void kpgen_uart_flush(void)
{
    /* kpgen_uart_putc returns only after TXDRDY: the last byte has left. */
}
