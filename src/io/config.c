/* SPDX-License-Identifier: Apache-2.0 */
/* `--config FILE` (nlsr_config_read in nlsr.h): a JSON object of long option names, handed to
 * the caller as command-line text so that a value from a file and one from the command line go
 * through the same parser and bound check. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx.h"
#include "file.h"

/* A config file holds a few options: anything larger is no config file. */
#define CONFIG_MAX_BYTES (1u << 20)

/* The value as command-line text; NULL for a type no option takes. */
static char *value_text(const cJSON *v)
{
    char *s = NULL;
    if (cJSON_IsString(v)) return strdup(v->valuestring);
    if (cJSON_IsBool(v)) return strdup(cJSON_IsTrue(v) ? "true" : "false");
    if (cJSON_IsNumber(v)) {
        /* Integers exactly (seeds), others with every digit a double holds. */
        double d = v->valuedouble;
        if (asprintf(&s, d > -9e15 && d < 9e15 && d == (double)(long long)d ? "%.0f" : "%.17g",
                     d) < 0)
            return NULL;
        return s;
    }
    if (cJSON_IsArray(v)) {
        size_t len = 1;
        for (const cJSON *it = v->child; it; it = it->next) {
            if (!cJSON_IsString(it) || strchr(it->valuestring, ',')) return NULL;
            len += strlen(it->valuestring) + 1;
        }
        if (!(s = calloc(1, len))) return NULL;
        for (const cJSON *it = v->child; it; it = it->next) {
            if (it != v->child) strcat(s, ",");
            strcat(s, it->valuestring);
        }
        return s;
    }
    return NULL;
}

int nlsr_config_read(nlsr_ctx *ctx, const char *path, nlsr_config_fn fn, void *arg)
{
    nlsr_err *e = &ctx->err;
    char *txt = NULL;
    size_t len = 0;
    /* A regular file only, opened without blocking: a FIFO is refused, not waited on. */
    NLSR_FORWARD(nlsr_read_small_file(path, CONFIG_MAX_BYTES, &txt, &len, e));
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return nlsr_fail(e, NLSR_E_FORMAT, "%s: a config file is one JSON object of option names",
                         path);
    }
    int rc = 0;
    for (const cJSON *it = root->child; it && rc == 0; it = it->next) {
        char *v = value_text(it);
        if (!v) {
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: \"%.100s\" needs a string, number, boolean or list of names",
                           path, it->string);
            break;
        }
        rc = fn(arg, it->string, v);
        free(v);
    }
    cJSON_Delete(root);
    return rc;
}
