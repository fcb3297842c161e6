#include "convert.h"

#include <math.h>
#include <string.h>

_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE binary32/64 required");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; nlsr supports little-endian hosts only"
#endif

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float nlsr_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

float nlsr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        /* Subnormal: value = man * 2^-24, exact in f32. */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

float nlsr_e4m3_to_f32(uint8_t b)
{
    /* float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN. */
    uint32_t exp = (b >> 3) & 0xFu, man = b & 0x7u;
    float v;
    if (exp == 0xF && man == 0x7) return (b & 0x80) ? -NAN : NAN;
    if (exp == 0) v = (float)man * 0x1p-9f;
    else v = bits_f32(((exp + 120u) << 23) | (man << 20));
    return (b & 0x80) ? -v : v;
}

float nlsr_e5m2_to_f32(uint8_t b)
{
    /* float8_e5m2 is the upper byte of an IEEE half. */
    return nlsr_f16_to_f32((uint16_t)((uint16_t)b << 8));
}

uint16_t nlsr_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7FFFu + lsb;
    return (uint16_t)(u >> 16);
}

uint16_t nlsr_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu)); /* NaN */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to or is infinity */
    if (a < 0x38800000u) {
        /* Result is subnormal or zero: value / 2^-24 rounded to nearest even. Adding 0.5 in
         * f32 magnitude space would double-round, so shift the mantissa by hand. */
        if (a < 0x33000000u) return sign; /* below half the smallest subnormal */
        uint32_t exp = a >> 23;
        uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - exp; /* 14 + (112 - exp + 1) - 1 ... brings man to 2^-24 units */
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xFFFu + lsb;
    return (uint16_t)(sign | (r >> 13));
}

void nlsr_to_f32(nlsr_dtype t, const void *src, float *dst, size_t n)
{
    const unsigned char *p = src;
    switch (t) {
    case NLSR_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case NLSR_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = nlsr_bf16_to_f32(h);
        }
        break;
    case NLSR_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = nlsr_f16_to_f32(h);
        }
        break;
    case NLSR_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case NLSR_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = nlsr_e4m3_to_f32(p[i]);
        break;
    case NLSR_DTYPE_F8_E5M2:
        for (size_t i = 0; i < n; i++) dst[i] = nlsr_e5m2_to_f32(p[i]);
        break;
    default:
        for (size_t i = 0; i < n; i++) dst[i] = NAN;
        break;
    }
}

void nlsr_from_f32(nlsr_dtype t, const float *src, void *dst, size_t n)
{
    unsigned char *p = dst;
    switch (t) {
    case NLSR_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case NLSR_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = nlsr_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case NLSR_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = nlsr_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case NLSR_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d = (double)src[i];
            memcpy(p + 8 * i, &d, 8);
        }
        break;
    default: break;
    }
}

int nlsr_dtype_is_writable_float(nlsr_dtype t)
{
    return t == NLSR_DTYPE_F32 || t == NLSR_DTYPE_BF16 || t == NLSR_DTYPE_F16 ||
           t == NLSR_DTYPE_F64;
}

void nlsr_to_f64(nlsr_dtype t, const void *src, double *dst, size_t n)
{
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *q = p + i * nlsr_dtype_size(t);
        switch (t) {
        case NLSR_DTYPE_F64: memcpy(&dst[i], q, 8); break;
        case NLSR_DTYPE_I8: dst[i] = (double)(int8_t)q[0]; break;
        case NLSR_DTYPE_U8: dst[i] = (double)q[0]; break;
        case NLSR_DTYPE_BOOL: dst[i] = q[0] ? 1.0 : 0.0; break;
        case NLSR_DTYPE_I16: { int16_t v; memcpy(&v, q, 2); dst[i] = (double)v; break; }
        case NLSR_DTYPE_U16: { uint16_t v; memcpy(&v, q, 2); dst[i] = (double)v; break; }
        case NLSR_DTYPE_I32: { int32_t v; memcpy(&v, q, 4); dst[i] = (double)v; break; }
        case NLSR_DTYPE_U32: { uint32_t v; memcpy(&v, q, 4); dst[i] = (double)v; break; }
        case NLSR_DTYPE_I64: { int64_t v; memcpy(&v, q, 8); dst[i] = (double)v; break; }
        case NLSR_DTYPE_U64: { uint64_t v; memcpy(&v, q, 8); dst[i] = (double)v; break; }
        default: {
            float f;
            nlsr_to_f32(t, q, &f, 1);
            dst[i] = (double)f;
            break;
        }
        }
    }
}
