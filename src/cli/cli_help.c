/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr help`, `nlsr help CMD`, `nlsr CMD --help`: printed from the option tables, so the help
 * lists exactly what the parser takes. */
#include <stdio.h>
#include <string.h>

#include "cli_args.h"

/* "--name METAVAR" or "-q, --quiet", and the help in a second column. */
static void opt_line(FILE *f, char shrt, const char *name, const char *metavar, const char *help,
                     const char *extra)
{
    char left[96];
    if (shrt) snprintf(left, sizeof left, "-%c, --%s%s%s", shrt, name, metavar ? " " : "",
                       metavar ? metavar : "");
    else snprintf(left, sizeof left, "    --%s%s%s", name, metavar ? " " : "", metavar ? metavar : "");
    if (strlen(left) > 28) fprintf(f, "  %s\n  %-28s %s%s\n", left, "", help, extra);
    else fprintf(f, "  %-28s %s%s\n", left, help, extra);
}

void cli_help_all(FILE *f)
{
    fputs("usage: nlsr COMMAND [options]\n\ncommands:\n", f);
    for (size_t i = 0; i < cli_ncommands; i++) {
        const cli_command *c = &cli_commands[i];
        fprintf(f, "  %s %s\n      %s\n", c->name, c->synopsis, c->summary);
    }
    fputs("  help [COMMAND]                 this help, or a command's options\n"
          "  version                        print the version\n"
          "\n"
          "'nlsr help COMMAND' or 'nlsr COMMAND --help' lists a command's options. Every option\n"
          "takes --name VALUE or --name=VALUE; --config FILE reads them from a JSON object.\n"
          "\n"
          "PATH is a safetensors file, a folder with model.safetensors or shards and\n"
          "model.safetensors.index.json, a PEFT adapter folder, or a Hugging Face hub cache\n"
          "snapshot (models--org--name/snapshots/COMMIT) or repository folder\n"
          "(models--org--name: refs/main, or --revision REF|COMMIT).\n",
          f);
}

int cli_help_command(const char *name, FILE *f)
{
    unsigned bit = cli_command_bit(name);
    const cli_command *c = bit ? cli_command_of(bit) : NULL;
    if (!c) return 2;
    fprintf(f, "usage: nlsr %s %s\n  %s\n\noptions:\n", c->name, c->synopsis, c->summary);
    for (size_t i = 0; i < cli_nopts; i++) {
        const cli_opt *o = &cli_opts[i];
        if (o->cmds & bit) opt_line(f, o->shrt, o->name, o->metavar, o->help, "");
    }
    int header = 0;
    for (size_t i = 0; i < nlsr_param_count(); i++) {
        const nlsr_param_info *in = nlsr_param_info_at(i);
        if (!(in->jobs & c->jobs)) continue;
        if (!header++)
            fprintf(f, "\nmethod parameters (METHOD.md; also keys of --config FILE)%s:\n",
                    bit == K_PLAN ? ", those of any job" : "");
        char mv[128], extra[160];
        if (in->type == NLSR_PARAM_ENUM) {
            mv[0] = '\0';
            for (int k = 0; in->values[k]; k++) {
                size_t l = strlen(mv);
                snprintf(mv + l, sizeof mv - l, "%s%s", k ? "|" : "", in->values[k]);
            }
        } else {
            snprintf(mv, sizeof mv, "%s", in->metavar ? in->metavar : "");
        }
        char range[96] = "";
        if (in->bounds & (NLSR_BOUND_MIN | NLSR_BOUND_MAX)) {
            if ((in->bounds & NLSR_BOUND_MIN) && (in->bounds & NLSR_BOUND_MAX))
                snprintf(range, sizeof range, "; %c%.17g, %.17g]",
                         in->bounds & NLSR_BOUND_MIN_OPEN ? '(' : '[', in->min, in->max);
        }
        extra[0] = '\0';
        if (in->def[0] && in->type != NLSR_PARAM_FLAG)
            snprintf(extra, sizeof extra, " (default %s%s)", in->def, range);
        else if (range[0])
            snprintf(extra, sizeof extra, " (%s)", range + 2);
        if (in->scorer >= 0) {
            size_t l = strlen(extra);
            snprintf(extra + l, sizeof extra - l, " [--scorer %s]",
                     nlsr_param_find("scorer")->values[in->scorer]);
        }
        opt_line(f, 0, in->name, in->type == NLSR_PARAM_FLAG ? NULL : mv, in->help, extra);
    }
    return 0;
}
