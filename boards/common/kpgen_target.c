/*
 * kpgen_target.c - semihosting calls and profile markers shared by every board.
 */
#include "kpgen_target.h"

#include <stdint.h>

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
