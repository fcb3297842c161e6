/* SPDX-License-Identifier: Apache-2.0 */
/* Element conversions between safetensors dtypes and f32/f64, exact as METHOD.md requires:
 * bf16 -> f32 is a 16-bit shift, f16 and F8 widen exactly, f32 -> bf16/f16 round to nearest
 * even with NaN kept NaN. Little-endian data on a little-endian host. */
#ifndef NLSR_COMPUTE_CONVERT_H
#define NLSR_COMPUTE_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "nlsr.h"

float nlsr_bf16_to_f32(uint16_t h);
float nlsr_f16_to_f32(uint16_t h);
float nlsr_e4m3_to_f32(uint8_t b);
float nlsr_e5m2_to_f32(uint8_t b);
uint16_t nlsr_f32_to_bf16(float f);
uint16_t nlsr_f32_to_f16(float f);

/* Floating dtypes only (F64 narrows with the C cast, round to nearest). src may be unaligned. */
void nlsr_to_f32(nlsr_dtype t, const void *src, float *dst, size_t n);
/* Stores f32 values as F32, F16 or BF16 (F64 widens exactly). Other dtypes: not called. */
void nlsr_from_f32(nlsr_dtype t, const float *src, void *dst, size_t n);
/* Every dtype: floats exactly, integers exactly below 2^53, BOOL as 0/1. */
void nlsr_to_f64(nlsr_dtype t, const void *src, double *dst, size_t n);
/* 1 if dtype t can hold f32 values written back by nlsr_from_f32. */
int nlsr_dtype_is_writable_float(nlsr_dtype t);

#endif
