/* Minimal Cortex-M4F boot for QEMU mps2-an386 + newlib rdimon (semihosting): a vector table at
 * address 0, FPU enabled, then newlib's _start (clears .bss, sets up the heap/stack, calls main,
 * exits through semihosting so the exit code becomes QEMU's). */
extern void _start(void);
void robopolicy_reset_handler(void);
static void fault_handler(void) { for (;;) { } }

__attribute__((naked, noreturn)) void robopolicy_reset_handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b _start\n");
}

__attribute__((section(".vectors"), used)) void (*const robopolicy_vectors[16])(void) = {
    (void (*)(void))0x20400000UL, /* initial SP: top of the 4 MiB SRAM at 0x20000000 */
    robopolicy_reset_handler,
    fault_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    0, 0, 0, 0,
    fault_handler, fault_handler, 0, fault_handler, fault_handler,
};
