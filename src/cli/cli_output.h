/* SPDX-License-Identifier: Apache-2.0 */
/* The program's printer: what the library says (its log and progress callbacks, include/nlsr.h)
 * on stderr. README "Progress and logs" says what appears when. */
#ifndef NLSR_CLI_OUTPUT_H
#define NLSR_CLI_OUTPUT_H
#include "nlsr.h"

/* The interval between progress lines when stderr is not a terminal, unless
 * --progress-interval SECONDS says otherwise. */
#define CLI_PROGRESS_INTERVAL 10.0

/* Installs the printer on ctx. verbosity: -1 quiet (warnings only: no progress, notices or
 * summary), 0 normal, 1 verbose (debug lines too, and a line when each phase ends on a
 * terminal). progress_interval: seconds between progress lines when stderr is not a terminal
 * (0: every update the library reports); negative: the default above. On a terminal a bar per
 * phase is redrawn in place, at most ten times a second. May be called again on the same
 * context (after the options are parsed). */
void cli_output_install(nlsr_ctx *ctx, int verbosity, double progress_interval);

/* Clears a progress bar left on the terminal, before the program prints something itself. */
void cli_output_clear(void);

#endif
