/*
 * startup.c - vector table, reset and fault handlers for every kpgen board (ARMv6-M, v7-M, v8-M).
 *
 * The vector table is complete for the board's chip: the initial stack pointer, the 15 system exceptions, then
 * one entry per interrupt of the chip's list (boards/chips/<chip>.toml, as KPGEN_IRQ_LIST in the generated
 * kpgen_chip.h). Every handler is weak and aliased to Default_Handler, so a firmware defines only those it uses.
 *
 * We own the reset path instead of newlib's rdimon crt0, whose stack comes from the semihosting
 * HEAPINFO call and can land inside a large .bss. The stack pointer is __StackTop from the linker
 * script (top of RAM); .data is copied from flash and .bss zeroed before main() runs.
 *
 * Any fault or unexpected exception prints "KPGEN-FAULT pc=0x%08x" (the PC stacked by the exception
 * entry, i.e. the faulting instruction for synchronous faults) straight to the host stdout
 * and stops the emulator with exit status 3. Both go through the board's console (kpgen_target.h): semihosting,
 * or the UART, which ends the run with "KPGEN-EXIT status=3" and a reset request.
 */
#include <stdint.h>
#include <stdlib.h>

#include "kpgen_chip.h"
#include "kpgen_target.h"

/* Linker script symbols (templates/link.ld.j2). */
extern uint32_t __StackTop[];
extern uint32_t __data_load__[];
extern uint32_t __data_start__[];
extern uint32_t __data_end__[];
extern uint32_t __bss_start__[];
extern uint32_t __bss_end__[];

extern int main(void);

void Reset_Handler(void) __attribute__((noreturn));
void Default_Handler(void);
void kpgen_fault_report(const uint32_t *frame) __attribute__((noreturn, used));

#define KPGEN_WEAK_HANDLER __attribute__((weak, alias("Default_Handler")))
void NMI_Handler(void) KPGEN_WEAK_HANDLER;
void HardFault_Handler(void) KPGEN_WEAK_HANDLER;
void MemManage_Handler(void) KPGEN_WEAK_HANDLER;
void BusFault_Handler(void) KPGEN_WEAK_HANDLER;
void UsageFault_Handler(void) KPGEN_WEAK_HANDLER;
void SecureFault_Handler(void) KPGEN_WEAK_HANDLER;
void SVC_Handler(void) KPGEN_WEAK_HANDLER;
void DebugMon_Handler(void) KPGEN_WEAK_HANDLER;
void PendSV_Handler(void) KPGEN_WEAK_HANDLER;
void SysTick_Handler(void) KPGEN_WEAK_HANDLER;

typedef void (*kpgen_handler_t)(void);

/* The chip's interrupt handlers: declared weak, aliased to Default_Handler. */
#define KPGEN_DECLARE_IRQ(handler) void handler(void) KPGEN_WEAK_HANDLER;
#define KPGEN_NO_IRQ
KPGEN_IRQ_LIST(KPGEN_DECLARE_IRQ, KPGEN_NO_IRQ)

/* Initial stack pointer, the 15 system exceptions, then the chip's interrupts (kpgen enables none of them). */
struct kpgen_vector_table {
    uint32_t *initial_sp;
    kpgen_handler_t system[15];
#if KPGEN_IRQ_COUNT > 0
    kpgen_handler_t irq[KPGEN_IRQ_COUNT];
#endif
};

#define KPGEN_IRQ_ENTRY(handler) handler,
#define KPGEN_IRQ_RESERVED 0,

__attribute__((section(".isr_vector"), used)) const struct kpgen_vector_table kpgen_vectors = {
    __StackTop,
    {
        Reset_Handler,
        NMI_Handler,
        HardFault_Handler,
        MemManage_Handler,
        BusFault_Handler,
        UsageFault_Handler,
        SecureFault_Handler, /* ARMv8-M; reserved on v6-M and v7-M */
        0,
        0,
        0,
        SVC_Handler,
        DebugMon_Handler,
        0,
        PendSV_Handler,
        SysTick_Handler,
    },
#if KPGEN_IRQ_COUNT > 0
    {KPGEN_IRQ_LIST(KPGEN_IRQ_ENTRY, KPGEN_IRQ_RESERVED)},
#endif
};

void Reset_Handler(void)
{
    const uint32_t *src = __data_load__;
    uint32_t *dst = __data_start__;
    while (dst < __data_end__) {
        *dst++ = *src++;
    }
    for (dst = __bss_start__; dst < __bss_end__; dst++) {
        *dst = 0u;
    }
#ifdef KPGEN_ENABLE_FPU
    /* CPACR: full access to CP10 and CP11 (FPU and MVE). */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    kpgen_clock_init(); /* the board's PLL and flash wait states ([clock]); nothing on emulated boards */
    kpgen_console_init();
    exit(main());
}

/*
 * Every exception lands here. Find the exception frame (EXC_RETURN bit 2: 0 = MSP, 1 = PSP) and hand
 * it to kpgen_fault_report. Thumb-1 only, so the same code runs on ARMv6-M.
 */
__attribute__((naked)) void Default_Handler(void)
{
    __asm__ volatile(
        ".syntax unified\n\t" /* GCC hands Thumb-1 inline asm to gas in divided syntax */
        "movs r0, #4\n\t"
        "mov r1, lr\n\t"
        "tst r0, r1\n\t"
        "beq 1f\n\t"
        "mrs r0, psp\n\t"
        "b 2f\n"
        "1:\n\t"
        "mrs r0, msp\n"
        "2:\n\t"
        "ldr r1, =kpgen_fault_report\n\t"
        "bx r1\n\t"
        ".ltorg\n");
}

/* frame: r0, r1, r2, r3, r12, lr, pc, xpsr as stacked on exception entry. */
void kpgen_fault_report(const uint32_t *frame)
{
    static const char hex[] = "0123456789abcdef";
    static const char prefix[] = "KPGEN-FAULT pc=0x";
    char line[sizeof prefix + 8 + 1];
    uint32_t pc = frame[6];
    unsigned i;
    for (i = 0; i < sizeof prefix - 1u; i++) {
        line[i] = prefix[i];
    }
    for (i = 0; i < 8u; i++) {
        line[sizeof prefix - 1u + i] = hex[(pc >> (28u - 4u * i)) & 0xFu];
    }
    line[sizeof prefix - 1u + 8u] = '\n';
    line[sizeof prefix + 8u] = '\0';
    /* Raw console output only: stdio and the heap may be what broke. */
    kpgen_puts_raw(line);
    kpgen_exit_raw(3);
}
