/* SPDX-License-Identifier: Apache-2.0 */
/* Names and sizes of safetensors dtypes: shared by the parser (io) and the kernels (compute). */
#include <string.h>

#include "dtype_table.h"

static const struct {
    const char *name;
    size_t size;
    int is_float;
} dtype_table[NLSR_DTYPE_COUNT] = {
    [NLSR_DTYPE_F64] = {"F64", 8, 1},     [NLSR_DTYPE_F32] = {"F32", 4, 1},
    [NLSR_DTYPE_F16] = {"F16", 2, 1},     [NLSR_DTYPE_BF16] = {"BF16", 2, 1},
    [NLSR_DTYPE_I8] = {"I8", 1, 0},       [NLSR_DTYPE_U8] = {"U8", 1, 0},
    [NLSR_DTYPE_I16] = {"I16", 2, 0},     [NLSR_DTYPE_U16] = {"U16", 2, 0},
    [NLSR_DTYPE_I32] = {"I32", 4, 0},     [NLSR_DTYPE_U32] = {"U32", 4, 0},
    [NLSR_DTYPE_I64] = {"I64", 8, 0},     [NLSR_DTYPE_U64] = {"U64", 8, 0},
    [NLSR_DTYPE_BOOL] = {"BOOL", 1, 0},   [NLSR_DTYPE_F8_E4M3] = {"F8_E4M3", 1, 1},
    [NLSR_DTYPE_F8_E5M2] = {"F8_E5M2", 1, 1},
};

const char *nlsr_dtype_name(nlsr_dtype t)
{
    return (unsigned)t < NLSR_DTYPE_COUNT ? dtype_table[t].name : "?";
}

size_t nlsr_dtype_size(nlsr_dtype t)
{
    return (unsigned)t < NLSR_DTYPE_COUNT ? dtype_table[t].size : 0;
}

int nlsr_dtype_is_float(nlsr_dtype t)
{
    return (unsigned)t < NLSR_DTYPE_COUNT ? dtype_table[t].is_float : 0;
}

int nlsr_dtype_from_name(const char *name)
{
    for (int i = 0; i < NLSR_DTYPE_COUNT; i++)
        if (strcmp(dtype_table[i].name, name) == 0) return i;
    return -1;
}
