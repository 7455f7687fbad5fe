/* tests/unit/bridge/mosq.h: a real mosquitto for tests, on 127.0.0.1 with a generated config
 * in a temporary directory and an explicit free port (in Mosquitto 2, `listener 0` would be a
 * unix socket). A guard process kills the broker and removes the directory if the test dies
 * without cleaning up (crash, sanitizer abort, signal). Test-only; single-threaded use.
 */
#ifndef TEST_MOSQ_H
#define TEST_MOSQ_H

#include <stdbool.h>
#include <sys/types.h>

struct mosq {
    const char *exe;
    char dir[64];   /* the temporary directory */
    char conf[128]; /* its mosquitto.conf */
    char log[128];  /* its mosquitto.log */
    int port;
    pid_t pid;    /* the running broker, 0 when none */
    pid_t guard;  /* the guard process */
    int guard_fd; /* write end of the guard's pipe: it reads broker pids, cleans up at EOF */
};

/* Picks a free port on 127.0.0.1 (bind port 0, read it, close). Returns it or -1. */
int mosq_free_port(void);

/* Makes the directory and config, starts the guard and the broker, waits until it accepts
 * connections. Returns 0 or -1 (with a message on stderr). */
int mosq_start(struct mosq *m, const char *exe);

/* Kills the broker (SIGKILL) and reaps it. */
void mosq_kill(struct mosq *m);

/* Starts the broker again on the same port. Returns 0 or -1. */
int mosq_restart(struct mosq *m);

/* Freezes / thaws the broker (SIGSTOP / SIGCONT): connections stay open, nothing is answered. */
void mosq_pause(struct mosq *m);
void mosq_resume(struct mosq *m);

/* Copies the broker's log to stderr (for failures). */
void mosq_dump_log(const struct mosq *m);

/* Kills the broker, removes the directory, ends the guard. Safe to call twice. */
void mosq_cleanup(struct mosq *m);

/* Async-signal-safe: kills the broker of the test's struct mosq (the guard cleans the rest). */
void mosq_emergency_kill(void);

#endif
