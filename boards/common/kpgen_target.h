/*
 * kpgen_target.h - what emitted firmware needs from the target, on every board.
 *
 * Two consoles, chosen at build time (`kpgen emit --console`):
 *   semihosting (the default without KPGEN_CONSOLE_UART): BKPT 0xAB calls through the debugger or QEMU;
 *     stdout goes through newlib's rdimon, the command line and the exit status through the calls below.
 *   uart (-DKPGEN_CONSOLE_UART): no semihosting at all. stdout goes to the board's UART (kpgen_uart.h,
 *     configured by the generated kpgen_console.h); the run ends with the line "KPGEN-EXIT status=N" and a
 *     system reset request (QEMU with -no-reboot then exits); the "command line" is what the host placed
 *     in kpgen_host_args before reset (QEMU's generic loader device), empty on a real board.
 */
#ifndef KPGEN_TARGET_H
#define KPGEN_TARGET_H

/* Program the board's core clock before the console starts (startup.c): the register steps of [clock] in its
 * board.toml (kpgen_chip.h), every poll bounded. Records the first step whose poll timed out in
 * kpgen_clock_failed_step (1-based; 0: all done), after which the core stays on whatever clock it had; the
 * console then reports it in one line "KPGEN-CLOCK failed step=N" and the UART uses its reset-clock divisor. */
void kpgen_clock_init(void);
extern unsigned long kpgen_clock_failed_step;

/* Polls of a register step give up after this many reads (about 0.1 s at 16 MHz, far above any PLL lock time). */
#define KPGEN_POLL_LIMIT 200000u

/* Set up the console before main (startup.c): the UART's clocks, pins and baud rate, or newlib's rdimon. */
void kpgen_console_init(void);

/*
 * Copy the semihosting command line (SYS_GET_CMDLINE) into buf, NUL-terminated.
 * Under QEMU it is the -semihosting-config arg=... values joined by single spaces
 * (kpgen.target.qemu.run(args=...)). Returns its length in bytes, or -1 if the host gives none or
 * it does not fit in len bytes (including the NUL). UART console: the text the host placed in
 * kpgen_host_args (kpgen.target.qemu passes it with -device loader), read once: a reset that follows sees none.
 */
int kpgen_cmdline(char *buf, int len);

/*
 * Instruction-count markers: kpgen.target.qemu.count_instructions() counts every instruction executed from the
 * first entry into kpgen_profile_begin() up to (not including) the first entry into kpgen_profile_end().
 * Both are never inlined and never merged, so each call is a real branch to a distinct address.
 * Fixed overhead inside the window: the body of kpgen_profile_begin (one BX LR) and the call to
 * kpgen_profile_end (one BL).
 */
void kpgen_profile_begin(void);
void kpgen_profile_end(void);

/*
 * Write a NUL-terminated string straight to the host's stdout (SYS_OPEN ":tt" + SYS_WRITE), bypassing
 * stdio and the heap: safe in a fault handler. Not ordered with stdio's buffer (flush it first if you can).
 */
void kpgen_puts_raw(const char *s);

/* Stop now with this exit status, without flushing stdio: SYS_EXIT_EXTENDED, or on the UART console the
 * line "KPGEN-EXIT status=N" followed by a system reset request (SYSRESETREQ). */
void kpgen_exit_raw(int status) __attribute__((noreturn));

#endif /* KPGEN_TARGET_H */
