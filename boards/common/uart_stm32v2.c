/*
 * uart_stm32v2.c - STM32 USART, second register layout (STM32L4, G4, H7, F7 ...: NUCLEO-L476RG, NUCLEO-H743ZI).
 * Registers: CR1 0x00 (bit 0 UE, bit 2 RE, bit 3 TE), BRR 0x0C, ISR 0x1C (bit 3 ORE, bit 5 RXNE, bit 6 TC,
 * bit 7 TXE), ICR 0x20 (bit 3 ORECF), RDR 0x24, TDR 0x28. Oversampling by 16: BRR = kernel clock / baud rate.
 * Not emulated by QEMU 7.2: built, not run, by kpgen's tests.
 */
#include "kpgen_console.h"
#include "kpgen_uart.h"

#define UART_REG(off) (*(volatile uint32_t *)(uintptr_t)(KPGEN_UART_BASE + (off)))
#define USART_CR1 UART_REG(0x00u)
#define USART_BRR UART_REG(0x0Cu)
#define USART_ISR UART_REG(0x1Cu)
#define USART_ICR UART_REG(0x20u)
#define USART_RDR UART_REG(0x24u)
#define USART_TDR UART_REG(0x28u)

#define ISR_ORE 0x08u
#define ISR_RXNE 0x20u
#define ISR_TC 0x40u
#define ISR_TXE 0x80u

void kpgen_uart_init(void)
{
    USART_CR1 = 0u;
    USART_BRR = ((uint32_t)KPGEN_UART_CLOCK_HZ + (uint32_t)KPGEN_UART_BAUD / 2u) / (uint32_t)KPGEN_UART_BAUD;
    USART_CR1 = 0x0Du; /* UE | RE | TE */
}

void kpgen_uart_putc(uint8_t c)
{
    while ((USART_ISR & ISR_TXE) == 0u) {
    }
    USART_TDR = c;
}

uint8_t kpgen_uart_getc(void)
{
    uint32_t isr;
    for (;;) {
        isr = USART_ISR;
        if ((isr & ISR_RXNE) != 0u) {
            return (uint8_t)(USART_RDR & 0xFFu);
        }
        if ((isr & ISR_ORE) != 0u) {
            USART_ICR = ISR_ORE; /* an overrun blocks reception until cleared; the framing catches the loss */
        }
    }
}

/* kpgen_uart_write and kpgen_uart_read, one byte at a time through the two functions above */
KPGEN_UART_BYTEWISE_BLOCKS

void kpgen_uart_flush(void)
{
    while ((USART_ISR & ISR_TC) == 0u) {
    }
}
