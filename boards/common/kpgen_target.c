/*
 * kpgen_target.c - the console (semihosting calls, or the UART with KPGEN_CONSOLE_UART) and the profile
 * markers shared by every board.
 */
#include "kpgen_target.h"

#include <stdint.h>

#include "kpgen_chip.h"

/* One register step (boards.py SetupStep): reg = (reg & ~clear) | set unless both are 0, then wait until
 * (reg & wait) == value, for at most KPGEN_POLL_LIMIT reads. */
struct kpgen_setup_step {
    uint32_t addr, clear, set, wait, value;
};

/* Run steps in order; 0 when every poll ended, else the 1-based index of the first step whose poll timed out
 * (the remaining steps are skipped: they build on it). */
__attribute__((unused)) static unsigned long kpgen_run_steps(const struct kpgen_setup_step *steps, uint32_t count)
{
    uint32_t i, n;
    for (i = 0; i < count; i++) {
        volatile uint32_t *reg = (volatile uint32_t *)(uintptr_t)steps[i].addr;
        if ((steps[i].clear | steps[i].set) != 0u) { /* a step with neither only waits (read-only status) */
            *reg = (*reg & ~steps[i].clear) | steps[i].set;
        }
        for (n = 0; (*reg & steps[i].wait) != steps[i].value; n++) {
            if (n >= KPGEN_POLL_LIMIT) {
                return (unsigned long)i + 1u;
            }
        }
    }
    return 0u;
}

unsigned long kpgen_clock_failed_step;

void kpgen_clock_init(void)
{
#if KPGEN_CLOCK_STEP_COUNT > 0
    static const struct kpgen_setup_step steps[KPGEN_CLOCK_STEP_COUNT] = KPGEN_CLOCK_STEP_TABLE;
    kpgen_clock_failed_step = kpgen_run_steps(steps, (uint32_t)KPGEN_CLOCK_STEP_COUNT);
#else
    kpgen_clock_failed_step = 0u;
#endif
}

/* "KPGEN-CLOCK failed step=N" when the clock set-up gave up: the run goes on at the clock the core had. */
static void kpgen_report_clock(void)
{
    char line[40] = "KPGEN-CLOCK failed step=";
    unsigned long v = kpgen_clock_failed_step;
    unsigned k = 24u, d = 1u;
    if (v == 0u) {
        return;
    }
    while (v / d >= 10u) {
        d *= 10u;
    }
    for (; d > 0u; d /= 10u) {
        line[k++] = (char)('0' + (char)(v / d % 10u));
    }
    line[k++] = '\n';
    line[k] = '\0';
    kpgen_puts_raw(line);
}

#ifdef KPGEN_CONSOLE_UART

#include <errno.h>
#include <sys/stat.h>

#include "kpgen_console.h"
#include "kpgen_uart.h"

#define KPGEN_HOST_ARGS_MAGIC 0x4B504741u /* "KPGA" little-endian bytes 'A' 'G' 'P' 'K' */
#define KPGEN_HOST_ARGS_MAX 120u
#define AIRCR (*(volatile uint32_t *)0xE000ED0Cu)
#define AIRCR_SYSRESETREQ 0x05FA0004u

/*
 * What the host wants this run to do, placed in RAM before reset: magic, length, text (no NUL needed).
 * In .noinit, which the start-up code neither copies nor zeroes; on a real board it holds whatever the RAM
 * held, which the magic and the length check reject (and it is cleared after one read).
 */
struct kpgen_host_args {
    uint32_t magic;
    uint32_t len;
    char text[KPGEN_HOST_ARGS_MAX];
};
__attribute__((section(".noinit"), used)) volatile struct kpgen_host_args kpgen_host_args;

#ifdef KPGEN_UART_CLOCK_RUN_HZ
/* The UART's input clock: the one [clock] programs, or the reset clock when that set-up gave up. */
unsigned long kpgen_uart_clock_hz = KPGEN_UART_CLOCK_RUN_HZ;
#endif

/* The board's [uart] setup steps (clocks and pin multiplexing), then the driver. */
void kpgen_console_init(void)
{
#if KPGEN_UART_SETUP_COUNT > 0
    static const struct kpgen_setup_step steps[KPGEN_UART_SETUP_COUNT] = KPGEN_UART_SETUP_TABLE;
    (void)kpgen_run_steps(steps, (uint32_t)KPGEN_UART_SETUP_COUNT); /* a timed-out poll: the UART may stay mute */
#endif
#ifdef KPGEN_UART_CLOCK_RUN_HZ
    if (kpgen_clock_failed_step != 0u) {
        kpgen_uart_clock_hz = KPGEN_UART_CLOCK_RESET_HZ;
    }
#endif
    kpgen_uart_init();
    kpgen_report_clock();
}

int kpgen_cmdline(char *buf, int len)
{
    uint32_t n = kpgen_host_args.len, i;
    int ok = kpgen_host_args.magic == KPGEN_HOST_ARGS_MAGIC && n <= KPGEN_HOST_ARGS_MAX;
    kpgen_host_args.magic = 0u;
    if (buf == 0 || len <= 0) {
        return -1;
    }
    buf[0] = '\0';
    if (!ok || n >= (uint32_t)len) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        buf[i] = kpgen_host_args.text[i];
    }
    buf[n] = '\0';
    return (int)n;
}

void kpgen_puts_raw(const char *s)
{
    while (*s != '\0') {
        kpgen_uart_putc((uint8_t)*s++);
    }
}

void kpgen_exit_raw(int status)
{
    static const char prefix[] = "KPGEN-EXIT status=";
    char digits[12];
    uint32_t v = status < 0 ? 0u - (uint32_t)status : (uint32_t)status;
    int k = 0;
    kpgen_puts_raw(prefix);
    if (status < 0) {
        kpgen_uart_putc((uint8_t)'-');
    }
    do {
        digits[k++] = (char)('0' + (char)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (k > 0) {
        kpgen_uart_putc((uint8_t)digits[--k]);
    }
    kpgen_uart_putc((uint8_t)'\n');
    kpgen_uart_flush();
    __asm__ volatile("dsb" ::: "memory");
    AIRCR = AIRCR_SYSRESETREQ;
    __asm__ volatile("dsb" ::: "memory");
    for (;;) {
    }
}

/* newlib's system calls (nosys.specs): stdout and stderr are the UART, there are no files. */
int _write(int fd, const char *buf, int n);
int _read(int fd, char *buf, int n);
int _close(int fd);
int _fstat(int fd, struct stat *st);
int _isatty(int fd);
int _lseek(int fd, int offset, int whence);
void _exit(int status) __attribute__((noreturn));

int _write(int fd, const char *buf, int n)
{
    if (fd != 1 && fd != 2) {
        errno = EBADF;
        return -1;
    }
    kpgen_uart_write((const uint8_t *)buf, n > 0 ? (uint32_t)n : 0u);
    return n;
}

int _read(int fd, char *buf, int n)
{
    (void)fd;
    (void)buf;
    (void)n;
    errno = EBADF;
    return -1;
}

int _close(int fd)
{
    (void)fd;
    return -1;
}

int _fstat(int fd, struct stat *st)
{
    (void)fd;
    st->st_mode = S_IFCHR; /* a terminal: stdout is line-buffered, as with semihosting */
    return 0;
}

int _isatty(int fd)
{
    return fd >= 0 && fd <= 2;
}

int _lseek(int fd, int offset, int whence)
{
    (void)fd;
    (void)offset;
    (void)whence;
    return 0;
}

void _exit(int status)
{
    kpgen_exit_raw(status);
}

#else /* semihosting */

extern void initialise_monitor_handles(void); /* newlib rdimon: opens stdin/stdout/stderr on the host */

void kpgen_console_init(void)
{
    initialise_monitor_handles();
    kpgen_report_clock();
}

/* Semihosting operation numbers (Arm semihosting specification v2). */
#define SYS_OPEN 0x01u
#define SYS_WRITE 0x05u
#define SYS_WRITE0 0x04u
#define SYS_OPEN_MODE_W 4u /* "w": ":tt" opened for writing is the host's stdout */
#define SYS_GET_CMDLINE 0x15u
#define SYS_EXIT_EXTENDED 0x20u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

/* One semihosting call: operation in r0, parameter (block address) in r1, result in r0. */
static uint32_t semihost(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int kpgen_cmdline(char *buf, int len)
{
    uint32_t block[2];
    if (buf == 0 || len <= 0) {
        return -1;
    }
    block[0] = (uint32_t)(uintptr_t)buf;
    block[1] = (uint32_t)len;
    if (semihost(SYS_GET_CMDLINE, block) != 0u) {
        buf[0] = '\0';
        return -1;
    }
    /* The host updates block[1] to the length written, excluding the NUL. */
    if (block[1] >= (uint32_t)len) {
        buf[len - 1] = '\0';
        return -1;
    }
    buf[block[1]] = '\0';
    return (int)block[1];
}

void kpgen_puts_raw(const char *s)
{
    static const char tt[] = ":tt";
    uint32_t block[3];
    uint32_t handle;
    uint32_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    block[0] = (uint32_t)(uintptr_t)tt;
    block[1] = SYS_OPEN_MODE_W;
    block[2] = (uint32_t)(sizeof tt - 1u);
    handle = semihost(SYS_OPEN, block);
    if (handle == 0xFFFFFFFFu) {
        (void)semihost(SYS_WRITE0, s); /* the debug console: stderr under QEMU */
        return;
    }
    block[0] = handle;
    block[1] = (uint32_t)(uintptr_t)s;
    block[2] = n;
    (void)semihost(SYS_WRITE, block);
}

void kpgen_exit_raw(int status)
{
    uint32_t block[2];
    block[0] = ADP_STOPPED_APPLICATION_EXIT;
    block[1] = (uint32_t)status;
    for (;;) {
        (void)semihost(SYS_EXIT_EXTENDED, block);
    }
}

#endif /* KPGEN_CONSOLE_UART */

/*
 * noipa: never inlined, cloned or merged by identical-code folding (the two bodies are equal), and the
 * caller assumes nothing about them, so every call stays. The asm text also differs, belt and braces.
 */
__attribute__((noinline, noipa, used)) void kpgen_profile_begin(void)
{
    __asm__ volatile("@ kpgen_profile_begin" ::: "memory");
}

__attribute__((noinline, noipa, used)) void kpgen_profile_end(void)
{
    __asm__ volatile("@ kpgen_profile_end" ::: "memory");
}
