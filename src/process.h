/* process.h: process titles, signal names and the fork helper shared by master and children. */
#ifndef CR_PROCESS_H
#define CR_PROCESS_H

#include "cr_core.h"

/* Call first thing in main: moves environ so the title can use argv's space. */
void cr_proctitle_init(int argc, char **argv);

/* Set the title shown by ps (/proc/PID/cmdline) and the 15-char comm name. */
void cr_proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "SIGSEGV" for SIGSEGV, or NULL. */
const char *cr_signal_name(int sig);

/* Describe a wait status: "exited with code 3", "killed by SIGKILL",
 * "killed by SIGSEGV (core dumped)". */
void cr_wait_status_text(int status, char *buf, size_t len);

#endif /* CR_PROCESS_H */
