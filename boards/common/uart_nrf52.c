/*
 * uart_nrf52.c - Nordic nRF52 UARTE (EasyDMA UART: nRF52840-DK). Registers: TASKS_STARTRX 0x000,
 * TASKS_STARTTX 0x008, EVENTS_ENDRX 0x110, EVENTS_ENDTX 0x120, ENABLE 0x500 (8), PSEL.TXD 0x50C, PSEL.RXD
 * 0x514, BAUDRATE 0x524, RXD.PTR 0x534, RXD.MAXCNT 0x538, TXD.PTR 0x544, TXD.MAXCNT 0x548, CONFIG 0x56C.
 * EasyDMA reads and writes RAM only, so every transfer goes through a buffer here. The receiver runs only
 * while a transfer is armed: kpgen_uart_read takes a whole block in one transfer, and the host leaves a short
 * gap between a frame's header and its payload (docs/validate.md). Not emulated by QEMU 7.2: built, not run.
 */
#include "kpgen_console.h"
#include "kpgen_uart.h"

#define UART_REG(off) (*(volatile uint32_t *)(uintptr_t)(KPGEN_UART_BASE + (off)))
#define TASKS_STARTRX UART_REG(0x000u)
#define TASKS_STARTTX UART_REG(0x008u)
#define EVENTS_ENDRX UART_REG(0x110u)
#define EVENTS_ENDTX UART_REG(0x120u)
#define UARTE_ENABLE UART_REG(0x500u)
#define PSEL_TXD UART_REG(0x50Cu)
#define PSEL_RXD UART_REG(0x514u)
#define UARTE_BAUDRATE UART_REG(0x524u)
#define RXD_PTR UART_REG(0x534u)
#define RXD_MAXCNT UART_REG(0x538u)
#define TXD_PTR UART_REG(0x544u)
#define TXD_MAXCNT UART_REG(0x548u)
#define UARTE_CONFIG UART_REG(0x56Cu)

#define CHUNK 64u
static uint8_t tx_buf[CHUNK];

void kpgen_uart_init(void)
{
    PSEL_TXD = (uint32_t)KPGEN_UART_TX_PIN;
    PSEL_RXD = (uint32_t)KPGEN_UART_RX_PIN;
    UARTE_BAUDRATE = (uint32_t)KPGEN_UART_BAUD_REG;
    UARTE_CONFIG = 0u; /* no flow control, no parity */
    UARTE_ENABLE = 8u;
}

static void send(uint32_t n)
{
    TXD_PTR = (uint32_t)(uintptr_t)tx_buf;
    TXD_MAXCNT = n;
    EVENTS_ENDTX = 0u;
    TASKS_STARTTX = 1u;
    while (EVENTS_ENDTX == 0u) {
    }
}

void kpgen_uart_putc(uint8_t c)
{
    tx_buf[0] = c;
    send(1u);
}

void kpgen_uart_write(const uint8_t *buf, uint32_t n)
{
    while (n > 0u) {
        uint32_t k = n < CHUNK ? n : CHUNK, i;
        for (i = 0; i < k; i++) {
            tx_buf[i] = buf[i];
        }
        send(k);
        buf += k;
        n -= k;
    }
}

void kpgen_uart_read(uint8_t *buf, uint32_t n)
{
    /* buf must be in RAM (EasyDMA); the firmware's receive buffers are. MAXCNT is 16 bits on the nRF52840. */
    while (n > 0u) {
        uint32_t k = n < 0xFFFFu ? n : 0xFFFFu;
        RXD_PTR = (uint32_t)(uintptr_t)buf;
        RXD_MAXCNT = k;
        EVENTS_ENDRX = 0u;
        TASKS_STARTRX = 1u;
        while (EVENTS_ENDRX == 0u) {
        }
        buf += k;
        n -= k;
    }
}

uint8_t kpgen_uart_getc(void)
{
    uint8_t c = 0u; /* written by EasyDMA, which the compiler cannot see */
    kpgen_uart_read(&c, 1u);
    return c;
}

void kpgen_uart_flush(void)
{
    /* send() returns only after ENDTX: the last byte has left. */
}
