/* SPDX-License-Identifier: Apache-2.0 */
/* The parameter structs' init functions (include/nlsr.h): the *_DEFAULT literals, for callers
 * that cannot use a C compound literal (other languages, C++ before C++20) and for those who
 * want the library's defaults rather than the ones of the header they compiled with. */
#include "nlsr.h"

void nlsr_select_params_init(nlsr_select_params *p)
{
    *p = NLSR_SELECT_PARAMS_DEFAULT;
}

void nlsr_scorer_params_init(nlsr_scorer_params *p)
{
    *p = NLSR_SCORER_PARAMS_DEFAULT;
}

void nlsr_realign_params_init(nlsr_realign_params *p)
{
    *p = NLSR_REALIGN_PARAMS_DEFAULT;
}

void nlsr_inplace_params_init(nlsr_inplace_params *p)
{
    *p = NLSR_INPLACE_PARAMS_DEFAULT;
}

void nlsr_rollback_params_init(nlsr_rollback_params *p)
{
    *p = NLSR_ROLLBACK_PARAMS_DEFAULT;
}

void nlsr_synth_params_init(nlsr_synth_params *p)
{
    *p = NLSR_SYNTH_PARAMS_DEFAULT;
}
