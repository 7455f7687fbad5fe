/* test_twinctl: runs the twinctl binary (path in argv[1]) against a store seeded through the
 * twins library, and checks stdout, the one-line stderr reason and the exit code of each
 * command. Table-driven; the store lives in a scratch directory removed at the end. */
#include "twins.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
static int checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static const char *twinctl;
static char dir[] = "/tmp/test_twinctl.XXXXXX";
static char db[64];
static int64_t t0; /* ms; the seeded points are at t0 - 60s and t0 - 30s */

/* --------------------------------------------------------------------------------------------
 * Seeding
 * ----------------------------------------------------------------------------------------- */

struct seed {
    const char *id;
    int64_t ts;
    uint64_t seq;
    int heart_rate;
};

static int seed_one(struct twin_txn *txn, void *ctx)
{
    const struct seed *s = ctx;
    char err[TWIN_ERR_LEN];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone zone;
    msgpack_object obj;
    size_t off = 0;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, s->seq);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_int64(&pk, s->ts);
    msgpack_pack_str_with_body(&pk, "heart_rate", 10);
    msgpack_pack_int(&pk, s->heart_rate);
    msgpack_pack_str_with_body(&pk, "vitals", 6);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "spo2", 4);
    msgpack_pack_double(&pk, 97.5);
    msgpack_zone_init(&zone, 1024);
    msgpack_unpack(sb.data, sb.size, &off, &zone, &obj);

    struct twin_apply_result res;
    int rc = twin_telemetry_apply(txn, s->id, strlen(s->id), &obj, t0, &res, err);
    if (rc < 0)
        fprintf(stderr, "seed %s: %s\n", s->id, err);
    /* pump-1 gets one queued command, for `commands` */
    if (rc == 0 && strcmp(s->id, "pump-1") == 0) {
        rc = twin_command_add(txn, s->id, strlen(s->id), "reboot", 6, NULL, 0, t0, NULL, NULL, NULL,
                              err);
        if (rc < 0)
            fprintf(stderr, "seed command %s: %s\n", s->id, err);
    }
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static int seed(void)
{
    char err[TWIN_ERR_LEN];
    struct twin_store *st;
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    so.path = db;
    so.map_size = 1u << 20;
    if (twin_store_open(&st, &so, err) < 0) {
        fprintf(stderr, "open %s: %s\n", db, err);
        return -1;
    }
    const struct seed seeds[] = {
        {"ecg-0001", t0 - 60000, 1, 72},
        {"ecg-0001", t0 - 30000, 2, 75},
        {"ecg-0002", t0 - 30000, 1, 80},
        {"pump-1", t0 - 30000, 1, 60},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0] && rc == 0; i++) {
        rc = twin_store_write(st, seed_one, (void *)&seeds[i], err);
        if (rc < 0)
            fprintf(stderr, "write: %s\n", err);
    }
    twin_store_close(st);
    return rc;
}

/* --------------------------------------------------------------------------------------------
 * Running twinctl
 * ----------------------------------------------------------------------------------------- */

struct result {
    int code;
    char out[16384];
    char err[1024];
};

static void slurp(int fd, char *buf, size_t size)
{
    size_t n = 0;
    ssize_t r;
    while (n + 1 < size && (r = read(fd, buf + n, size - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
}

/* Runs twinctl with argv (NULL-terminated, without the program) and env additions. */
static void run(const char *const *args, const char *env, struct result *r)
{
    char outp[128], errp[128];
    snprintf(outp, sizeof outp, "%s/out", dir);
    snprintf(errp, sizeof errp, "%s/err", dir);
    char *argv[16];
    int n = 0;
    argv[n++] = (char *)twinctl;
    for (; *args && n < 15; args++)
        argv[n++] = (char *)*args;
    argv[n] = NULL;

    pid_t pid = fork();
    if (pid == 0) {
        int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        unsetenv("TWINHUB_STORE_PATH");
        if (env)
            putenv((char *)env);
        if (chdir(dir) != 0)
            _exit(99);
        execv(twinctl, argv);
        _exit(98);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    r->code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    int fd = open(outp, O_RDONLY);
    slurp(fd, r->out, sizeof r->out);
    close(fd);
    fd = open(errp, O_RDONLY);
    slurp(fd, r->err, sizeof r->err);
    close(fd);
    unlink(outp);
    unlink(errp);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* One case: args, extra environment, exit code, stdout must contain each of `out` (NULL: no
 * check, "" : must be empty), line count (-1: any), stderr must equal `err` ("" : empty). */
struct tcase {
    const char *args[12];
    const char *env;
    int code;
    const char *out[4];
    int lines;
    const char *err;
};

static void test_cases(void)
{
    char ts1[64], ts2[64], e_no_twin[128], e_no_db[160];
    snprintf(ts1, sizeof ts1, "{\"ts\":%lld,\"value\":72}", (long long)(t0 - 60000));
    snprintf(ts2, sizeof ts2, "{\"ts\":%lld,\"value\":75}", (long long)(t0 - 30000));
    snprintf(e_no_twin, sizeof e_no_twin, "twinctl: no twin 'ecg-0009' in db\n");
    snprintf(e_no_db, sizeof e_no_db,
             "twinctl: no database at missing (set --db, TWINHUB_STORE_PATH or store.path)\n");

    const struct tcase cases[] = {
        {{"--db", "db", "get", "ecg-0001"},
         NULL,
         0,
         {"\"id\":\"ecg-0001\"", "\"heart_rate\":75", "\"version\":2"},
         1,
         ""},
        {{"--db", "db", "get", "ecg-0009"}, NULL, 1, {""}, 0, e_no_twin},
        {{"--db", "db", "--table", "get", "ecg-0001"},
         NULL,
         0,
         {"reported.heart_rate = 75\n", "reported.vitals.spo2 = 97.5\n", "id = \"ecg-0001\"\n"},
         -1,
         ""},
        {{"--db", "db", "list"}, NULL, 0, {"\"id\":\"ecg-0002\"", "\"id\":\"pump-1\""}, 3, ""},
        {{"--db", "db", "list", "--prefix", "ecg-"}, NULL, 0, {"ecg-0001", "ecg-0002"}, 2, ""},
        {{"--db", "db", "list", "--limit", "1"}, NULL, 0, {"ecg-0001"}, 1, ""},
        {{"--db", "db", "list", "--prefix", "zz"}, NULL, 0, {""}, 0, ""},
        {{"--db", "db", "list", "--table"},
         NULL,
         0,
         {"ID        VERSION  LAST_SEEN                 REPORTED\n", "ecg-0001        2  "},
         4,
         ""},
        {{"--db", "db", "history", "ecg-0001", "reported.heart_rate"}, NULL, 0, {ts1, ts2}, 2, ""},
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--since", "45s"},
         NULL,
         0,
         {ts2},
         1,
         ""},
        {{"--db", "db", "history", "ecg-0001", "vitals.spo2", "--table"},
         NULL,
         0,
         {"  97.5\n"},
         2,
         ""},
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--since", "10s"},
         NULL,
         1,
         {""},
         0,
         "twinctl: no history of reported.heart_rate for twin 'ecg-0001' in the last 10s\n"},
        {{"--db", "db", "history", "ecg-0009", "heart_rate"}, NULL, 1, {""}, 0, e_no_twin},
        /* query */
        {{"--db", "db", "query", "reported.heart_rate > 70"},
         NULL,
         0,
         {"\"id\":\"ecg-0001\"", "\"id\":\"ecg-0002\"", "\"meta\":"},
         2,
         ""},
        {{"--db", "db", "query", "--fields", "reported.heart_rate,reported.vitals", "--prefix",
          "ecg-"},
         NULL,
         0,
         {"{\"id\":\"ecg-0001\",\"version\":2,\"reported.heart_rate\":75,"
          "\"reported.vitals\":{\"spo2\":97.5}}\n"},
         2,
         ""},
        {{"--db", "db", "query", "--fields", "reported.heart_rate", "--order",
          "-reported.heart_rate"},
         NULL,
         0,
         {"\"id\":\"ecg-0002\",\"version\":1,\"reported.heart_rate\":80}\n{\"id\":\"ecg-0001\"",
          "}\n{\"id\":\"pump-1\""},
         3,
         ""},
        {{"--db", "db", "query", "--fields", "reported.heart_rate", "--order",
          "reported.heart_rate", "--limit", "1"},
         NULL,
         0,
         {"\"id\":\"pump-1\""},
         1,
         NULL},
        {{"--db", "db", "--table", "query", "--fields", "reported.heart_rate,rules"},
         NULL,
         0,
         {"ID        VERSION  reported.heart_rate  rules\n", "pump-1    1        60  "},
         4,
         ""},
        {{"--db", "db", "query", "connected"}, NULL, 0, {""}, 0, ""},
        {{"--db", "db", "query", "reported.heart_rate > 1 and avgg(reported.heart_rate, 60s)"},
         NULL,
         2,
         {""},
         0,
         "twinctl: where:1:29: unknown function 'avgg'; did you mean 'avg'?\n"},
        {{"--db", "db", "query", "--order", "-nope"},
         NULL,
         2,
         {""},
         0,
         NULL},
        {{"--db", "db", "query", "--cursor", "xyz"},
         NULL,
         2,
         {""},
         0,
         "twinctl: cursor: not a cursor\n"},
        {{"--db", "db", "query", "--limit", "5000"},
         NULL,
         2,
         {""},
         0,
         "twinctl: --limit: at most 1000\n"},
        /* history ranges */
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--from", "0"},
         NULL,
         0,
         {ts1, ts2},
         2,
         ""},
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--from", "-45s", "--to", "now"},
         NULL,
         0,
         {ts2},
         1,
         ""},
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--from", "0", "--step", "1h"},
         NULL,
         0,
         {"\"min\":72,\"max\":75,\"avg\":73.5,\"count\":2}"},
         -1,
         ""},
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--from", "2001-01-01T00:00:00Z",
          "--to", "2001-01-02"},
         NULL,
         1,
         {""},
         0,
         NULL},
        {{"--db", "db", "history", "ecg-0001", "heart_rate", "--from", "yesterday"},
         NULL,
         2,
         {""},
         0,
         NULL},
        {{"--db", "db", "history", "ecg-0009", "heart_rate", "--step", "1m"},
         NULL,
         1,
         {""},
         0,
         e_no_twin},
        {{"--db", "db", "--table", "history", "ecg-0001", "heart_rate", "--step", "60s"},
         NULL,
         0,
         {"T                                  MIN"},
         -1,
         ""},
        {{"--db", "db", "stats"}, NULL, 0, {"\"twins\":3", "\"path\":\"db\""}, 1, ""},
        {{"--db", "db", "stats", "--table"}, NULL, 0, {"twins           3\n"}, -1, ""},
        {{"get", "pump-1"}, "TWINHUB_STORE_PATH=db", 0, {"\"id\":\"pump-1\""}, 1, ""},
        {{"-c", "twinhub.yaml", "get", "pump-1"}, NULL, 0, {"\"id\":\"pump-1\""}, 1, ""},
        {{"--db", "missing", "stats"}, NULL, 2, {""}, 0, e_no_db},
        {{"--version"}, NULL, 0, {"twinctl " TWINHUB_VERSION "\n"}, 1, ""},
        {{"--help"}, NULL, 0, {"history ID PATH", "exit status"}, -1, ""},
        {{NULL}, NULL, 2, {""}, -1, NULL},
        {{"frobnicate"},
         NULL,
         2,
         {""},
         0,
         "twinctl: unknown command 'frobnicate' (see twinctl --help)\n"},
        {{"--db", "db", "get"}, NULL, 2, {""}, 0, "twinctl: usage: twinctl get ID\n"},
        {{"--db", "db", "get", "a", "--since", "1m"},
         NULL,
         2,
         {""},
         0,
         "twinctl: get does not take --since\n"},
        {{"--db", "db", "list", "--limit", "x"},
         NULL,
         2,
         {""},
         0,
         "twinctl: --limit: expected a whole number above 0, got 'x'\n"},
        /* commands (LMDB) */
        {{"--db", "db", "commands", "pump-1"},
         NULL,
         0,
         {"\"cmd\":\"reboot\"", "\"state\":\"queued\"", "\"attempts\":0"},
         1,
         ""},
        {{"--db", "db", "commands", "ecg-0001"}, NULL, 0, {""}, 0, ""},
        {{"--db", "db", "commands", "ecg-0009"}, NULL, 1, {""}, 0, e_no_twin},
        {{"--db", "db", "--table", "commands", "pump-1"},
         NULL,
         0,
         {"ID                CMD                   STATE", "reboot                queued"},
         2,
         ""},
        /* set-desired and send: everything refused before any connection */
        {{"set-desired", "ecg-0001", "{\"a\":"}, NULL, 2, {""}, 0, NULL},
        {{"set-desired", "ecg-0001", "[1,2]"},
         NULL,
         2,
         {""},
         0,
         "twinctl: desired: expected a JSON object, got '[1,2]'\n"},
        {{"set-desired", "ecg-0001", "{}", "--version", "x"},
         NULL,
         2,
         {""},
         0,
         "twinctl: --version: expected a whole number, got 'x'\n"},
        {{"send", "ecg-0001", "reboot", "{}", "--expires", "soon"}, NULL, 2, {""}, 0, NULL},
        {{"send", "ecg-0001", "reboot", "nope"},
         NULL,
         2,
         {""},
         0,
         "twinctl: args: expected a JSON object, got 'nope'\n"},
        {{"send", "ecg-0001", "reboot", "{}", "--timeout", "0"}, NULL, 2, {""}, 0, NULL},
        {{"send", "ecg-0001"}, NULL, 2, {""}, 0, NULL},
        {{"--db", "db", "get", "ecg-0001", "--version", "3"},
         NULL,
         2,
         {""},
         0,
         "twinctl: get does not take --version\n"},
        {{"--db", "db", "get", "ecg-0001", "--broker", "tcp://x:1"},
         NULL,
         2,
         {""},
         0,
         "twinctl: get does not take --broker\n"},
        {{"send", "ecg-0001", "reboot", "--timeout", "1s", "--broker", "tcp://127.0.0.1:1"},
         NULL,
         2,
         {""},
         0,
         NULL},
        {{"--bogus"}, NULL, 2, {""}, 0, "twinctl: unknown option '--bogus' (see twinctl --help)\n"},
        {{"-c", "nope.yaml", "stats"},
         NULL,
         2,
         {""},
         0,
         "twinctl: nope.yaml: No such file or directory\n"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct tcase *c = &cases[i];
        static struct result r;
        char name[160] = "";
        for (const char *const *a = c->args; *a; a++)
            snprintf(name + strlen(name), sizeof name - strlen(name), " %s", *a);
        run(c->args, c->env, &r);
        CHECK(r.code == c->code, "twinctl%s: exit %d, want %d (stderr: %s)", name, r.code, c->code,
              r.err);
        for (size_t j = 0; j < 4 && c->out[j]; j++) {
            if (c->out[j][0] == '\0')
                CHECK(r.out[0] == '\0', "twinctl%s: stdout not empty: %s", name, r.out);
            else
                CHECK(strstr(r.out, c->out[j]) != NULL, "twinctl%s: no '%s' in:\n%s", name,
                      c->out[j], r.out);
        }
        if (c->lines >= 0)
            CHECK(count_lines(r.out) == (size_t)c->lines, "twinctl%s: %zu lines, want %d:\n%s",
                  name, count_lines(r.out), c->lines, r.out);
        if (c->err)
            CHECK(strcmp(r.err, c->err) == 0, "twinctl%s: stderr\n   got  %s   want %s", name,
                  r.err, c->err);
        if (c->code != 0 && c->err == NULL)
            CHECK(r.err[0] != '\0', "twinctl%s: failed silently", name);
    }
}

static void remove_tree(const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", path);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_twinctl PATH-TO-TWINCTL\n");
        return 2;
    }
    static char exe[4096];
    if (!realpath(argv[1], exe)) { /* run() changes directory before exec */
        perror(argv[1]);
        return 2;
    }
    twinctl = exe;
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(db, sizeof db, "%s/db", dir);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    t0 = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;

    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/twinhub.yaml", dir);
    FILE *f = fopen(cfg, "w");
    if (!f || fputs("store:\n  path: db\n", f) < 0 || fclose(f) != 0) {
        perror(cfg);
        return 2;
    }

    if (seed() < 0) {
        remove_tree(dir);
        return 1;
    }
    test_cases();
    remove_tree(dir);
    printf("test_twinctl: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
