/*
 * kpgen_uart.h - the one UART every UART-console firmware talks through: 8 data bits, no parity, 1 stop bit,
 * polled (no interrupt, no DMA except where the peripheral has nothing else: nRF52 UARTE).
 *
 * One driver file per UART family implements it (uart_cmsdk.c, uart_stm32.c, uart_stm32v2.c, uart_nrf51.c,
 * uart_nrf52.c, uart_pl011.c); the build compiles only the board's. The board's address, baud rate, clock and
 * pins come from kpgen_console.h, generated from the [uart] table of its board.toml.
 */
#ifndef KPGEN_UART_H
#define KPGEN_UART_H

#include <stdint.h>

/* Enable transmitter and receiver at KPGEN_UART_BAUD. Clocks and pins are set up before (KPGEN_UART_SETUP). */
void kpgen_uart_init(void);

/* Send one byte; waits while the transmitter is busy. */
void kpgen_uart_putc(uint8_t c);

/* Wait for one received byte and return it. */
uint8_t kpgen_uart_getc(void);

/* Send n bytes (n may be 0). */
void kpgen_uart_write(const uint8_t *buf, uint32_t n);

/* Receive exactly n bytes into buf (n may be 0). */
void kpgen_uart_read(uint8_t *buf, uint32_t n);

/* The block transfers of a driver that moves one byte at a time (every family but the nRF52's DMA UARTE), in
 * terms of its kpgen_uart_putc and kpgen_uart_getc: such a driver file expands this once, at file scope. */
#define KPGEN_UART_BYTEWISE_BLOCKS                                  \
    void kpgen_uart_write(const uint8_t *buf, uint32_t n)           \
    {                                                               \
        uint32_t i;                                                 \
        for (i = 0; i < n; i++) {                                   \
            kpgen_uart_putc(buf[i]);                                \
        }                                                           \
    }                                                               \
    void kpgen_uart_read(uint8_t *buf, uint32_t n)                  \
    {                                                               \
        uint32_t i;                                                 \
        for (i = 0; i < n; i++) {                                   \
            buf[i] = kpgen_uart_getc();                             \
        }                                                           \
    }

/* Wait until every byte sent has left the transmitter, so a reset that follows cuts nothing off. */
void kpgen_uart_flush(void);

#endif /* KPGEN_UART_H */
