/* SPDX-License-Identifier: Apache-2.0 */
#include "targets.h"

#include <stdlib.h>
#include <string.h>

const char *const nlsr_target_names[NLSR_NTARGET_NAMES] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

int nlsr_is_target(const st_tensor *t, const char *const *names, size_t nnames)
{
    if (!names) {
        names = nlsr_target_names;
        nnames = NLSR_NTARGET_NAMES;
    }
    size_t L = strlen(t->name);
    if (t->ndim != 2 || L < 7 || strcmp(t->name + L - 7, ".weight") != 0) return 0;
    for (size_t k = 0; k < nnames; k++)
        if (strstr(t->name, names[k])) return 1;
    return 0;
}

void nlsr_targets_summarize(const nlsr_ckpt *ck, nlsr_target_summary *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = ck->t[i].t;
        const char *p = strstr(t->name, "layers.");
        if (p) {
            char *end;
            long v = strtol(p + 7, &end, 10);
            if (end != p + 7 && *end == '.' && v + 1 > out->layers) out->layers = v + 1;
        }
        int is_lora = strstr(t->name, ".lora_A.") || strstr(t->name, ".lora_B.");
        for (int k = 0; k < NLSR_NTARGET_NAMES; k++) {
            if (!strstr(t->name, nlsr_target_names[k])) continue;
            if (is_lora || nlsr_is_target(t, NULL, 0)) {
                out->present[k] = 1;
                if (!is_lora || strstr(t->name, ".lora_A.")) out->modules++;
            }
            break;
        }
    }
}
