/* SPDX-License-Identifier: Apache-2.0 */
/* Small JSON helpers shared by the report, the patch file's header and the parameters: numbers
 * that read back exactly, 64-bit integers beyond double's range. */
#ifndef NLSR_COMMON_JSON_H
#define NLSR_COMMON_JSON_H

#include <stdint.h>

struct cJSON;

/* A cJSON number item that prints the shortest decimal string reading back as exactly v
 * (cJSON's own printing may drop the last digits); NaN and infinities become null. */
struct cJSON *nlsr_json_number(double v);
/* A number when v < 2^53 (exact in a double), else a decimal string. */
struct cJSON *nlsr_json_u64(uint64_t v);
/* Reads what nlsr_json_u64 wrote (or any integral number below 2^53); 1 if it did. */
int nlsr_json_get_u64(const struct cJSON *v, uint64_t *out);

#endif
