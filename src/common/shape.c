/* SPDX-License-Identifier: Apache-2.0 */
#include "shape.h"

#include <inttypes.h>
#include <stdio.h>

void nlsr_shape_str(int ndim, const uint64_t *shape, const char *sep, char *buf, size_t cap)
{
    if (cap == 0) return;
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRIu64, d ? sep : "", shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}
