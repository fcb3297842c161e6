#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of fuzz_header into fuzz/corpus/.

Each seed is a whole safetensors file image (8-byte length, header, data), as the target
expects. Seeds from the fixtures keep each file's header as written (tensor names, dtypes,
metadata, key order), with every dimension cut to 1 so that the data section stays a few
bytes: the fuzzer mutates headers, and megabytes of weights would only slow it down. The
small dtypes fixture is kept byte for byte. Hand-written seeds add the valid edge cases and
one file per refusal the reader knows, so mutations start next to every check.

Usage: fuzz/make_corpus.py [FIXTURE_DIR] [OUT_DIR]   (defaults: tests/data, fuzz/corpus)
"""
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I16": 2, "U16": 2,
         "I32": 4, "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def image(header: bytes, data_size: int) -> bytes:
    return struct.pack("<Q", len(header)) + header + bytes(data_size)


def padded(obj) -> bytes:
    h = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return h + b" " * (-(8 + len(h)) % 8)


def shrink(path: str) -> bytes:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    items = [(k, v) for k, v in hdr.items() if k != "__metadata__"]
    pos = 0
    for _, v in sorted(items, key=lambda kv: tuple(kv[1]["data_offsets"])):
        v["shape"] = [1 if d else 0 for d in v["shape"]]
        size = SIZES[v["dtype"]] * (0 if 0 in v["shape"] else 1)
        v["data_offsets"] = [pos, pos + size]
        pos += size
    return image(padded(hdr), pos)


def tensor(dtype, shape, begin):
    numel = 1
    for d in shape:
        numel *= d
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + numel * SIZES[dtype]]}


def handmade():
    t = tensor
    ok = {"a": t("F32", [2], 0), "b": t("BF16", [2, 2], 8)}
    seeds = {
        # valid edge cases
        "valid-spaces": (b"  " + padded(ok) + b"   ", 16),
        "valid-out-of-order": (padded({"b": t("BF16", [2, 2], 8), "a": t("F32", [2], 0)}), 16),
        "valid-empty-and-scalar": (padded({"__metadata__": {"format": "pt"},
                                           "e": t("F32", [0, 4], 0), "s": t("F64", [], 0)}), 8),
        "valid-no-tensors": (b"{}", 0),
        "valid-unicode-escapes": (padded({"caf\u00e9 \"q\" \\ \u0001": t("U8", [3], 0),
                                          "\U0001f600": t("BOOL", [1], 3)}), 4),
        "valid-all-dtypes": (padded({d.lower(): t(d, [2], 2 * sum(
            SIZES[x] for x in list(SIZES)[:i])) for i, d in enumerate(SIZES)}),
            2 * sum(SIZES.values())),
        # refusals
        "bad-array": (b"[1,2]", 0),
        "bad-not-json": (b"{\"a\":", 0),
        "bad-utf8": (b"{\"\xff\":{}}", 0),
        "bad-nul": (b"{\"a\0\":{}}", 0),
        "bad-missing-dtype": (b'{"a":{"shape":[1],"data_offsets":[0,4]}}', 4),
        "bad-string-shape": (b'{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}', 4),
        "bad-negative-offset": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', 4),
        "bad-fraction": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}', 4),
        "bad-exponent": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4e0]}}', 4),
        "bad-2p53": (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[9007199254740992,'
                     b'9007199254740993]}}', 1),
        "bad-overflow": (b'{"a":{"dtype":"U8","shape":[4294967296,4294967296,2],'
                         b'"data_offsets":[0,0]}}', 0),
        "bad-bytes-overflow": (b'{"a":{"dtype":"F64","shape":[4503599627370496,1024],'
                               b'"data_offsets":[0,0]}}', 0),
        "bad-span": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', 4),
        "bad-gap": (padded({"a": t("F32", [1], 0), "b": t("F32", [1], 8)}), 12),
        "bad-overlap": (padded({"a": t("F32", [2], 0), "b": t("F32", [1], 4)}), 8),
        "bad-past-end": (padded(ok), 15),
        "bad-trailing": (padded(ok), 17),
        "bad-duplicate": (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                          b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', 2),
        "bad-dtype": (b'{"a":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}}', 1),
        "bad-metadata": (b'{"__metadata__":{"n":1},"a":{"dtype":"U8","shape":[1],'
                         b'"data_offsets":[0,1]}}', 1),
        "bad-ndim": (padded({"a": t("U8", [1] * 17, 0)}), 1),
        "bad-after-object": (b'{} {}', 0),
        "bad-deep": (b"[" * 2000 + b"]" * 2000, 0),
    }
    return {k: image(h, d) for k, (h, d) in seeds.items()}


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "data")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "fuzz", "corpus")
    os.makedirs(out, exist_ok=True)
    seeds = handmade()
    seen = set()
    for d, _, files in sorted(os.walk(fixtures)):
        for name in sorted(files):
            if not name.endswith(".safetensors"):
                continue
            path = os.path.join(d, name)
            if os.path.getsize(path) <= 4096:
                with open(path, "rb") as f:
                    img = f.read()
            else:
                img = shrink(path)
            digest = hashlib.sha1(img).hexdigest()
            if digest in seen:  # many shards and adapters share one header
                continue
            seen.add(digest)
            rel = os.path.relpath(path, fixtures).replace(os.sep, "-")
            seeds["fixture-" + rel[: -len(".safetensors")]] = img
    for name, img in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(img)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
