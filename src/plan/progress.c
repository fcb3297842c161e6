/* SPDX-License-Identifier: Apache-2.0 */
/* Byte counts for people (progress.h). */
#include "progress.h"

#include <stdio.h>

const char *nlsr_fmt_bytes(double b, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024.0 && u < 4) {
        b /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%.0f B", b);
    else snprintf(buf, len, "%.2f %s", b, unit[u]);
    return buf;
}
