/* SPDX-License-Identifier: Apache-2.0 */
/* nlsr_version: the library's own version, for programs that may run with a newer libnlsr.so
 * than the header they were compiled with. */
#include "nlsr.h"

const char *nlsr_version(void)
{
    return NLSR_VERSION;
}
