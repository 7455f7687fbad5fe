/* lexer: splits an expression into tokens (numbers, durations, strings, names, operators). It
 * does not know what a name means; compile.c does. */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t off, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(err, RULES_ERR_LEN, "%zu: ", off + 1);
    va_start(ap, fmt);
    vsnprintf(err + n, RULES_ERR_LEN - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static const struct {
    const char *word;
    enum tok_kind kind;
} words[] = {
    {"and", T_AND}, {"or", T_OR},   {"not", T_NOT}, {"true", T_TRUE},
    {"false", T_FALSE}, {"nil", T_NIL}, {"null", T_NIL},
};

/* Units of a duration, in ms; "ms" before "m". */
static const struct {
    const char *unit;
    double ms;
} units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};

static int number(const char *text, size_t len, size_t *pos, struct token *t, char *err)
{
    size_t start = *pos, i = start;
    char buf[64];

    while (i < len && isdigit((unsigned char)text[i]))
        i++;
    if (i < len && text[i] == '.') {
        i++;
        while (i < len && isdigit((unsigned char)text[i]))
            i++;
    }
    if (i < len && (text[i] == 'e' || text[i] == 'E') && i + 1 < len &&
        (isdigit((unsigned char)text[i + 1]) ||
         ((text[i + 1] == '+' || text[i + 1] == '-') && i + 2 < len &&
          isdigit((unsigned char)text[i + 2])))) {
        i += 2;
        while (i < len && isdigit((unsigned char)text[i]))
            i++;
    }
    if (i - start >= sizeof(buf))
        return fail(err, start, "number too long");
    memcpy(buf, text + start, i - start);
    buf[i - start] = '\0';
    t->kind = T_NUM;
    t->num = strtod(buf, NULL);
    if (!isfinite(t->num))
        return fail(err, start, "number out of range: %s", buf);
    /* a unit right after the digits makes it a duration in ms */
    if (i < len && isalpha((unsigned char)text[i])) {
        size_t u = i;
        while (u < len && isalnum((unsigned char)text[u]))
            u++;
        for (size_t k = 0; k < sizeof(units) / sizeof(units[0]); k++) {
            if (strlen(units[k].unit) == u - i && memcmp(text + i, units[k].unit, u - i) == 0) {
                t->kind = T_DURATION;
                t->num *= units[k].ms;
                i = u;
                break;
            }
        }
        if (t->kind != T_DURATION)
            return fail(err, i, "unknown unit '%.*s' (durations take ms, s, m, h or d)",
                        (int)(u - i), text + i);
    }
    t->len = i - start;
    *pos = i;
    return 0;
}

int rules__lex(const char *text, size_t len, size_t *pos, struct token *t, char *err)
{
    size_t i = *pos;

    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r'))
        i++;
    memset(t, 0, sizeof(*t));
    t->off = i;
    if (i == len) {
        t->kind = T_END;
        *pos = i;
        return 0;
    }
    unsigned char c = (unsigned char)text[i];
    if (isdigit(c) || (c == '.' && i + 1 < len && isdigit((unsigned char)text[i + 1]))) {
        *pos = i;
        return number(text, len, pos, t, err);
    }
    if (isalpha(c) || c == '_') {
        size_t s = i;
        while (i < len && (isalnum((unsigned char)text[i]) || text[i] == '_'))
            i++;
        t->kind = T_IDENT;
        t->len = i - s;
        for (size_t k = 0; k < sizeof(words) / sizeof(words[0]); k++)
            if (strlen(words[k].word) == t->len && memcmp(words[k].word, text + s, t->len) == 0)
                t->kind = words[k].kind;
        *pos = i;
        return 0;
    }
    if (c == '"' || c == '\'' || c == '`') {
        size_t s = i++;
        while (i < len && (unsigned char)text[i] != c) {
            if (text[i] == '\\' && c != '`')
                i++;
            i++;
        }
        if (i >= len)
            return fail(err, s, "unterminated %s", c == '`' ? "quoted name" : "string");
        t->kind = c == '`' ? T_QIDENT : T_STR;
        t->off = s + 1;
        t->len = i - s - 1;
        if (t->kind == T_QIDENT && t->len == 0)
            return fail(err, s, "empty quoted name");
        *pos = i + 1;
        return 0;
    }
    char n = i + 1 < len ? text[i + 1] : '\0';
    t->len = 1;
    switch (c) {
    case '(': t->kind = T_LPAREN; break;
    case ')': t->kind = T_RPAREN; break;
    case ',': t->kind = T_COMMA; break;
    case '.': t->kind = T_DOT; break;
    case '+': t->kind = T_PLUS; break;
    case '-': t->kind = T_MINUS; break;
    case '*': t->kind = T_STAR; break;
    case '/': t->kind = T_SLASH; break;
    case '%': t->kind = T_PERCENT; break;
    case '<':
        t->kind = n == '=' ? T_LE : T_LT;
        t->len = n == '=' ? 2 : 1;
        break;
    case '>':
        t->kind = n == '=' ? T_GE : T_GT;
        t->len = n == '=' ? 2 : 1;
        break;
    case '=':
        if (n != '=')
            return fail(err, i, "'=' is not an operator; compare with '=='");
        t->kind = T_EQ;
        t->len = 2;
        break;
    case '!':
        if (n != '=')
            return fail(err, i, "'!' is not an operator; use 'not'");
        t->kind = T_NE;
        t->len = 2;
        break;
    case '&':
        return fail(err, i, "'&' is not an operator; use 'and'");
    case '|':
        return fail(err, i, "'|' is not an operator; use 'or'");
    default:
        if (c < 0x20 || c == 0x7f)
            return fail(err, i, "control character 0x%02x", c);
        return fail(err, i, "unexpected character '%c'", c < 0x80 ? c : '?');
    }
    *pos = i + t->len;
    return 0;
}

const char *rules__tok_name(enum tok_kind k)
{
    static const char *const names[] = {
        [T_END] = "the end",  [T_NUM] = "a number",   [T_DURATION] = "a duration",
        [T_STR] = "a string", [T_IDENT] = "a name",   [T_QIDENT] = "a quoted name",
        [T_LPAREN] = "'('",   [T_RPAREN] = "')'",     [T_COMMA] = "','",
        [T_DOT] = "'.'",      [T_PLUS] = "'+'",       [T_MINUS] = "'-'",
        [T_STAR] = "'*'",     [T_SLASH] = "'/'",      [T_PERCENT] = "'%'",
        [T_EQ] = "'=='",      [T_NE] = "'!='",        [T_LT] = "'<'",
        [T_LE] = "'<='",      [T_GT] = "'>'",         [T_GE] = "'>='",
        [T_AND] = "'and'",    [T_OR] = "'or'",        [T_NOT] = "'not'",
        [T_TRUE] = "'true'",  [T_FALSE] = "'false'",  [T_NIL] = "'nil'",
    };
    return names[k];
}
