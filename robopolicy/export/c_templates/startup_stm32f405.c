/* Cortex-M4F boot for an STM32F405 (QEMU netduinoplus2) + newlib rdimon (semihosting): vector table
 * at the start of flash, FPU enabled before any float code, .data copied from flash, .bss zeroed, then
 * main; exit() reports its return value through semihosting, so it becomes QEMU's exit code. */
#include <stdlib.h>
extern unsigned long _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
extern void initialise_monitor_handles(void);
extern int main(void);
void robopolicy_reset_handler(void);
void robopolicy_start(void);
void _init(void) { }  /* no C++ constructors here; newlib's exit path still references these */
void _fini(void) { }
static void fault_handler(void) { for (;;) { } }

__attribute__((naked, noreturn)) void robopolicy_reset_handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n" /* CPACR: full access to CP10/CP11 (the FPU) */
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b robopolicy_start\n");
}

void robopolicy_start(void)
{
    unsigned long *src = _sidata, *dst = _sdata;
    while (dst < _edata) *dst++ = *src++;
    for (dst = _sbss; dst < _ebss; ++dst) *dst = 0;
    initialise_monitor_handles();
    exit(main());
}

__attribute__((section(".vectors"), used)) void (*const robopolicy_vectors[16])(void) = {
    (void (*)(void))_estack, robopolicy_reset_handler,
    fault_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler, fault_handler,
};
