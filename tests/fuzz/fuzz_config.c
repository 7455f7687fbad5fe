/* fuzz_config.c: the hub's configuration file (hub/config.c, libyaml underneath) on arbitrary
 * bytes: config_load_file on the input written to a temporary file, then what the operator
 * sees of it (config_print) and what SIGHUP does with it (config_apply_reload). Invariants:
 *   - a failure is -EINVAL (or -ENOMEM) with a reason naming the file, never a crash or a leak;
 *   - what loads prints as YAML that loads again, to the same values (every key but
 *     broker.password, which config_print masks);
 *   - config_apply_reload writes a NUL-terminated key list into any buffer size.
 * The input's first 16 lines also go, as text, through config_parse_duration_ms,
 * config_parse_size, config_set (the first "key value" line) and config_load_env (lines starting
 * with TWINHUB_).
 */
#include "config.h"
#include "fuzz.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char path[4200];

static void write_file(const char *p, const void *data, size_t size)
{
    FILE *f = fopen(p, "wb");

    FUZZ_CHECK(f, "fopen %s", p);
    FUZZ_CHECK(size == 0 || fwrite(data, 1, size, f) == size, "fwrite");
    FUZZ_CHECK(fclose(f) == 0, "fclose");
}

/* Every field but password and source. */
static void check_same(const struct config *a, const struct config *b, const char *printed)
{
#define S(f)                                                                                       \
    FUZZ_CHECK(strcmp(a->f, b->f) == 0, #f ": \"%s\" printed and read back as \"%s\"\n%s", a->f,   \
               b->f, printed)
#define N(f) FUZZ_CHECK(a->f == b->f, #f " changed when printed and read back\n%s", printed)
    S(broker_url);
    S(client_id);
    S(username);
    N(mqtt_version);
    N(keepalive_s);
    N(session_expiry_s);
    N(reconnect_min_s);
    N(reconnect_max_s);
    S(tls_ca);
    S(tls_cert);
    S(tls_key);
    N(tls_verify);
    S(devices_prefix);
    S(twins_prefix);
    S(hub_prefix);
    S(db_path);
    N(sync_commit);
    N(sync_interval_ms);
    N(map_size);
    N(max_map_size);
    N(writemap);
    N(max_payload);
    N(max_depth);
    N(max_keys);
    N(max_twin_size);
    N(max_twins);
    N(max_clock_skew_s);
    N(history_max_points);
    N(publish_qos);
    N(publish_inflight);
    N(publish_json);
    N(errors_rate);
    N(errors_burst);
    S(rules_path);
    N(log_level);
#undef S
#undef N
}

static void check_err(int rc, const char *err)
{
    FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM, "config: %d", rc);
    FUZZ_CHECK(err[0] && strlen(err) < CONFIG_ERR_LEN, "no reason for %d", rc);
}

/* The lines of the input as single values, flags and variables. */
static void check_lines(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *save = NULL, *envp[9];
    size_t ne = 0, nl = 0;
    bool set = false;
    struct config c;
    char err[CONFIG_ERR_LEN];
    uint64_t v;

    FUZZ_CHECK(text, "out of memory");
    if (size)
        memcpy(text, data, size);
    text[size] = '\0';
    config_defaults(&c);
    for (char *line = strtok_r(text, "\n", &save); line && nl < 16;
         line = strtok_r(NULL, "\n", &save), nl++) {
        char *sp = strchr(line, ' ');

        (void)config_parse_duration_ms(line, 1, &v);
        (void)config_parse_duration_ms(line, 1000, &v);
        (void)config_parse_size(line, &v);
        /* an unknown key costs an edit distance against every key (slow under coverage
         * instrumentation): the first "key value" line only */
        if (sp && !set) {
            int rc;

            *sp = '\0';
            err[0] = '\0';
            rc = config_set(&c, line, sp + 1, err);
            set = true;
            if (rc)
                check_err(rc, err);
            *sp = ' ';
        }
        if (!strncmp(line, "TWINHUB_", 8) && ne < 8)
            envp[ne++] = line;
    }
    envp[ne] = NULL;
    if (ne) {
        int rc;

        err[0] = '\0';
        rc = config_load_env(&c, envp, err);
        if (rc)
            check_err(rc, err);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config c, again, cur;
    char err[CONFIG_ERR_LEN], keys[512], *printed = NULL;
    size_t plen = 0;
    FILE *mem;
    int rc;

    if (!path[0])
        snprintf(path, sizeof path, "%s/twinhub.yaml", fuzz_tmpdir());
    write_file(path, data, size);

    config_defaults(&c);
    err[0] = '\0';
    rc = config_load_file(&c, path, err);
    if (rc) {
        check_err(rc, err);
        check_lines(data, size);
        return 0;
    }

    /* what loads prints, and what prints loads back the same */
    mem = open_memstream(&printed, &plen);
    FUZZ_CHECK(mem, "open_memstream");
    config_print(&c, mem);
    FUZZ_CHECK(fclose(mem) == 0, "fclose");
    write_file(path, printed, plen);
    config_defaults(&again);
    err[0] = '\0';
    rc = config_load_file(&again, path, err);
    FUZZ_CHECK(rc == 0, "config_print wrote a file that does not load: %s\n%s", err, printed);
    check_same(&c, &again, printed);
    free(printed);

    /* a SIGHUP from the defaults to this file, with room for every key list and for none */
    config_defaults(&cur);
    config_apply_reload(&cur, &c, keys, sizeof keys);
    FUZZ_CHECK(memchr(keys, '\0', sizeof keys), "restart keys not terminated");
    for (size_t n = 1; n < 40; n += 19) {
        char *small = malloc(n);

        FUZZ_CHECK(small, "out of memory");
        config_defaults(&cur);
        config_apply_reload(&cur, &c, small, n);
        FUZZ_CHECK(memchr(small, '\0', n), "restart keys not terminated in %zu bytes", n);
        free(small);
    }
    check_lines(data, size);
    return 0;
}
