/*
 * kpgen_target.h - what emitted firmware needs from the target, on every board.
 *
 * Semihosting (BKPT 0xAB) is the only channel to the host: stdout goes through newlib's rdimon,
 * the command line and the exit status through the calls below.
 */
#ifndef KPGEN_TARGET_H
#define KPGEN_TARGET_H

/*
 * Copy the semihosting command line (SYS_GET_CMDLINE) into buf, NUL-terminated.
 * Under QEMU it is the -semihosting-config arg=... values joined by single spaces
 * (kpgen.qemu.run(args=...)). Returns its length in bytes, or -1 if the host gives none or
 * it does not fit in len bytes (including the NUL).
 */
int kpgen_cmdline(char *buf, int len);

/*
 * Instruction-count markers: kpgen.qemu.count_instructions() counts every instruction executed from the
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

/* Stop the emulator now with this exit status (SYS_EXIT_EXTENDED), without flushing stdio. */
void kpgen_exit_raw(int status) __attribute__((noreturn));

#endif /* KPGEN_TARGET_H */
