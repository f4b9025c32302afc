"""Target: boards, toolchain, ELF reading, QEMU, cycles, flashing, verification and the run report."""
