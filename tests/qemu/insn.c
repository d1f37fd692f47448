/*
 * A QEMU TCG plugin that counts the guest instructions a user-mode run executes and prints
 * `qemu-insn: instructions=N` on stderr when the program exits. Debian's QEMU 7.2 (`qemu-user`)
 * is built with plugin support but ships none of QEMU's example plugins (`libinsn.so`), so the
 * aarch64 HIL test (`tests/tests/hil_aarch64.rs`) and `bench/aarch64_insns.sh` build this one
 * with the host's C compiler:
 *
 *     cc -shared -fPIC -O2 -o libinsn.so tests/qemu/insn.c
 *     qemu-aarch64 -cpu max -plugin ./libinsn.so PROGRAM ARGS
 *
 * It declares the few plugin API functions it calls itself (QEMU's plugin API version 1, as in
 * QEMU 6.0 to 8.x: `include/qemu/qemu-plugin.h`), so no QEMU headers are needed; QEMU resolves
 * them when it loads the plugin and refuses one whose `qemu_plugin_version` it does not support.
 * Each translated block adds its instruction count inline when it runs (one shared counter: exact
 * for one guest thread; several threads may lose increments).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
/* enum qemu_plugin_op */
#define QEMU_PLUGIN_INLINE_ADD_U64 0

#define EXPORT __attribute__((visibility("default")))

EXPORT int qemu_plugin_version = 1;

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *),
                                    void *userdata);

static uint64_t instructions;

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &instructions,
                                             qemu_plugin_tb_n_insns(tb));
}

static void at_exit(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    fprintf(stderr, "qemu-insn: instructions=%llu\n", (unsigned long long)instructions);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    (void)info;
    (void)argc;
    (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
