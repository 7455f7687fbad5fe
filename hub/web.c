/* web: the dashboard's files (http.dashboard: the `web` directory the build assembles), read
 * into memory once at start and served as they are. Only what was there at start is served:
 * a URL is looked up among those names, never joined to a path on disk, so no request can
 * read anything else. It does not know what the files hold.
 *
 * Threads: web_open and web_close on the main thread; web_get on the connections' threads
 * (the files never change while the listener runs). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "http.h"

#define WEB_FILES_MAX 256
#define WEB_BYTES_MAX (32u << 20)
#define WEB_NAME_MAX 128

struct web_file {
    char url[WEB_NAME_MAX + 2]; /* "/js/app.js" */
    const char *type;
    char *body;
    size_t len;
};

struct web_files {
    struct web_file f[WEB_FILES_MAX];
    unsigned n;
    size_t bytes;
};

static const char *type_of(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json; charset=utf-8"},
        {".map", "application/json; charset=utf-8"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].type;
    return NULL; /* not served */
}

/* Adds the files of dir/sub (sub "" or one name), recursing once. */
static int add_dir(struct web_files *w, const char *dir, const char *sub, int depth, char *err,
                   size_t es)
{
    char path[512];
    snprintf(path, sizeof(path), "%s%s%s", dir, sub[0] ? "/" : "", sub);
    DIR *d = opendir(path);
    if (!d) {
        snprintf(err, es, "http.dashboard %s: %s", path, strerror(errno));
        return -errno;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        const char *name = de->d_name;
        if (name[0] == '.')
            continue;
        char rel[WEB_NAME_MAX + 1], full[768];
        if ((size_t)snprintf(rel, sizeof(rel), "%s%s%s", sub, sub[0] ? "/" : "", name) >=
            sizeof(rel))
            continue;
        snprintf(full, sizeof(full), "%s/%s", dir, rel);
        struct stat st;
        if (stat(full, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 1)
                rc = add_dir(w, dir, rel, depth + 1, err, es);
            continue;
        }
        const char *type = type_of(name);
        if (!S_ISREG(st.st_mode) || !type)
            continue;
        if (w->n == WEB_FILES_MAX || w->bytes + (size_t)st.st_size > WEB_BYTES_MAX) {
            snprintf(err, es, "http.dashboard %s: more than %u files or %u MiB", dir,
                     WEB_FILES_MAX, WEB_BYTES_MAX >> 20);
            rc = -EFBIG;
            break;
        }
        struct web_file *f = &w->f[w->n];
        FILE *fp = fopen(full, "rb");
        if (!fp || !(f->body = malloc((size_t)st.st_size + 1))) {
            snprintf(err, es, "http.dashboard %s: %s", full, fp ? "out of memory" : strerror(errno));
            rc = fp ? -ENOMEM : -errno;
            if (fp)
                fclose(fp);
            break;
        }
        f->len = fread(f->body, 1, (size_t)st.st_size, fp);
        fclose(fp);
        snprintf(f->url, sizeof(f->url), "/%s", rel);
        f->type = type;
        w->bytes += f->len;
        w->n++;
    }
    closedir(d);
    return rc;
}

int web_open(struct web_files **out, const char *dir, char *err, size_t es)
{
    struct web_files *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, es, "out of memory");
        return -ENOMEM;
    }
    int rc = add_dir(w, dir, "", 0, err, es);
    bool index = false;
    for (unsigned i = 0; i < w->n; i++)
        index = index || !strcmp(w->f[i].url, "/index.html");
    if (rc == 0 && !index) {
        snprintf(err, es, "http.dashboard %s: no index.html (build the dashboard: see README)",
                 dir);
        rc = -ENOENT;
    }
    if (rc < 0) {
        web_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

void web_close(struct web_files *w)
{
    if (!w)
        return;
    for (unsigned i = 0; i < w->n; i++)
        free(w->f[i].body);
    free(w);
}

enum MHD_Result web_get(const struct web_files *w, struct MHD_Connection *c, const char *url)
{
    if (!strcmp(url, "/"))
        url = "/index.html";
    for (unsigned i = 0; i < w->n; i++)
        if (!strcmp(w->f[i].url, url))
            return http_reply(c, MHD_HTTP_OK, w->f[i].type, w->f[i].body, w->f[i].len, false);
    static const char nf[] = "not found\n";
    return http_reply(c, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", nf, sizeof(nf) - 1,
                      false);
}
