/* tests/unit/bridge/mosq.c: starts, kills, restarts and cleans up a real mosquitto for the
 * bridge tests (see mosq.h). Runs on the test's main thread only.
 */
#include "mosq.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t emergency_pid; /* for mosq_emergency_kill */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int mosq_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Removes the files of a flat directory, then the directory. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[512];
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* The guard: reads the pid of each broker started (0 when it was reaped); at EOF (the test
 * ended, however it ended) kills the last one and removes the directory. */
static void guard_run(int rfd, const char *dir)
{
    signal(SIGINT, SIG_IGN); /* a ^C reaches the whole process group: outlive the test */
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    int32_t pid = 0, v;
    for (;;) {
        ssize_t n = read(rfd, &v, sizeof(v));
        if (n == (ssize_t)sizeof(v)) {
            pid = v;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
    if (pid > 0) {
        kill(pid, SIGKILL);
        kill(pid, SIGCONT);
    }
    remove_dir(dir);
    _exit(0);
}

static void guard_tell(struct mosq *m, pid_t pid)
{
    int32_t v = (int32_t)pid;
    if (m->guard_fd >= 0 && write(m->guard_fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
        fprintf(stderr, "mosq: cannot tell the guard: %s\n", strerror(errno));
}

static bool listening(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static int spawn(struct mosq *m)
{
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "mosq: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        signal(SIGPIPE, SIG_DFL);
        execl(m->exe, m->exe, "-c", m->conf, (char *)NULL);
        fprintf(stderr, "mosq: exec %s: %s\n", m->exe, strerror(errno));
        _exit(127);
    }
    m->pid = pid;
    emergency_pid = pid;
    guard_tell(m, pid);
    for (int i = 0; i < 100; i++) { /* up to 10 s */
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "mosq: the broker exited at start (status %d)\n", st);
            m->pid = 0;
            emergency_pid = 0;
            guard_tell(m, 0);
            mosq_dump_log(m);
            return -1;
        }
        if (listening(m->port))
            return 0;
        sleep_ms(100);
    }
    fprintf(stderr, "mosq: the broker does not listen on port %d\n", m->port);
    mosq_dump_log(m);
    return -1;
}

int mosq_start(struct mosq *m, const char *exe)
{
    memset(m, 0, sizeof(*m));
    m->exe = exe;
    m->guard_fd = -1;
    snprintf(m->dir, sizeof(m->dir), "/tmp/twinhub-bridge-XXXXXX");
    if (!mkdtemp(m->dir)) {
        fprintf(stderr, "mosq: mkdtemp: %s\n", strerror(errno));
        m->dir[0] = '\0';
        return -1;
    }
    snprintf(m->conf, sizeof(m->conf), "%s/mosquitto.conf", m->dir);
    snprintf(m->log, sizeof(m->log), "%s/mosquitto.log", m->dir);

    int p[2];
    if (pipe(p) < 0 || fcntl(p[0], F_SETFD, FD_CLOEXEC) < 0 ||
        fcntl(p[1], F_SETFD, FD_CLOEXEC) < 0) {
        fprintf(stderr, "mosq: pipe: %s\n", strerror(errno));
        remove_dir(m->dir);
        return -1;
    }
    fflush(NULL);
    m->guard = fork();
    if (m->guard == 0) {
        close(p[1]);
        guard_run(p[0], m->dir);
    }
    close(p[0]);
    if (m->guard < 0) {
        fprintf(stderr, "mosq: fork: %s\n", strerror(errno));
        close(p[1]);
        remove_dir(m->dir);
        return -1;
    }
    m->guard_fd = p[1];

    if ((m->port = mosq_free_port()) < 0) {
        fprintf(stderr, "mosq: no free port\n");
        return -1;
    }
    /* Run as root, mosquitto switches to user "mosquitto", who could not write our 0700
     * directory: name the current user (for a non-root user the setting has no effect). */
    struct passwd *pw = getpwuid(getuid());
    FILE *f = fopen(m->conf, "w");
    if (!f) {
        fprintf(stderr, "mosq: %s: %s\n", m->conf, strerror(errno));
        return -1;
    }
    fprintf(f,
            "# generated by the bridge tests\n"
            "listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "user %s\n"
            "log_dest file %s\n"
            "log_type all\n"
            "connection_messages true\n"
            "log_timestamp_format %%H:%%M:%%S\n",
            m->port, pw ? pw->pw_name : "root", m->log);
    if (fclose(f) != 0) {
        fprintf(stderr, "mosq: %s: %s\n", m->conf, strerror(errno));
        return -1;
    }
    return spawn(m);
}

void mosq_kill(struct mosq *m)
{
    if (m->pid <= 0)
        return;
    kill(m->pid, SIGKILL);
    kill(m->pid, SIGCONT); /* in case it was paused */
    while (waitpid(m->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    m->pid = 0;
    emergency_pid = 0;
    guard_tell(m, 0);
}

int mosq_restart(struct mosq *m)
{
    mosq_kill(m);
    return spawn(m);
}

void mosq_pause(struct mosq *m)
{
    if (m->pid > 0)
        kill(m->pid, SIGSTOP);
}

void mosq_resume(struct mosq *m)
{
    if (m->pid > 0)
        kill(m->pid, SIGCONT);
}

void mosq_dump_log(const struct mosq *m)
{
    FILE *f = m->log[0] ? fopen(m->log, "r") : NULL;
    if (!f)
        return;
    char line[512];
    fprintf(stderr, "---- %s ----\n", m->log);
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fprintf(stderr, "---- end of log ----\n");
    fclose(f);
}

void mosq_cleanup(struct mosq *m)
{
    mosq_kill(m);
    if (m->dir[0]) {
        remove_dir(m->dir);
        m->dir[0] = '\0';
    }
    if (m->guard_fd >= 0) {
        close(m->guard_fd); /* the guard sees EOF and exits */
        m->guard_fd = -1;
    }
    if (m->guard > 0) {
        while (waitpid(m->guard, NULL, 0) < 0 && errno == EINTR)
            ;
        m->guard = 0;
    }
}

void mosq_emergency_kill(void)
{
    pid_t pid = emergency_pid;
    if (pid > 0) {
        kill(pid, SIGKILL);
        kill(pid, SIGCONT);
    }
}
