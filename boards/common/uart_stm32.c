/*
 * uart_stm32.c - STM32 USART, first register layout (STM32F1/F2/F4: QEMU netduinoplus2 and stm32vldiscovery,
 * NUCLEO-F446RE, STM32F4DISCOVERY). Registers: SR 0x00 (bit 5 RXNE, bit 6 TC, bit 7 TXE), DR 0x04, BRR 0x08,
 * CR1 0x0C (bit 13 UE, bit 3 TE, bit 2 RE). Oversampling by 16: BRR = peripheral clock / baud rate.
 * Reading SR then DR also clears an overrun, so a byte lost to a slow reader never stops reception.
 */
#include "kpgen_console.h"
#include "kpgen_uart.h"

#define UART_REG(off) (*(volatile uint32_t *)(uintptr_t)(KPGEN_UART_BASE + (off)))
#define USART_SR UART_REG(0x00u)
#define USART_DR UART_REG(0x04u)
#define USART_BRR UART_REG(0x08u)
#define USART_CR1 UART_REG(0x0Cu)

#define SR_RXNE 0x20u
#define SR_TC 0x40u
#define SR_TXE 0x80u

void kpgen_uart_init(void)
{
    USART_BRR = ((uint32_t)KPGEN_UART_CLOCK_HZ + (uint32_t)KPGEN_UART_BAUD / 2u) / (uint32_t)KPGEN_UART_BAUD;
    USART_CR1 = 0x200Cu; /* UE | TE | RE: the receiver drops bytes while RE is clear, so the host waits for a line */
}

void kpgen_uart_putc(uint8_t c)
{
    while ((USART_SR & SR_TXE) == 0u) {
    }
    USART_DR = c;
}

uint8_t kpgen_uart_getc(void)
{
    while ((USART_SR & SR_RXNE) == 0u) {
    }
    return (uint8_t)(USART_DR & 0xFFu);
}

/* kpgen_uart_write and kpgen_uart_read, one byte at a time through the two functions above */
KPGEN_UART_BYTEWISE_BLOCKS

void kpgen_uart_flush(void)
{
    while ((USART_SR & SR_TXE) == 0u) {
    }
    while ((USART_SR & SR_TC) == 0u) {
    }
}
