/* SPDX-License-Identifier: Apache-2.0 */
#ifndef NLSR_COMMON_DTYPE_TABLE_H
#define NLSR_COMMON_DTYPE_TABLE_H
#include "nlsr.h"
/* The dtype whose safetensors name is `name` (case-sensitive), or -1. */
int nlsr_dtype_from_name(const char *name);
#endif
