#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Full-size Llama-shaped checkpoints as SPARSE files, for memory benchmarks at any scale.

Each shard holds a real safetensors header (the tensor names, shapes and order `nlsr synth`
writes, see src/jobs/synth.c) and is then ftruncate()d to its full size: the tensor data are
holes, which read back as zeros without disk I/O, so a 141 GB (70B) or 811 GB (405B)
checkpoint takes a few MB of disk. The folder gets model.safetensors.index.json and a
config.json like synth's. Every role is the same zeros: good for memory and plan figures,
meaningless for similarities.

    bench/sparse_ckpt.py --preset llama-70b --out DIR [--layers N] [--shard-size 5G]
"""
import argparse
import json
import os
import struct

PRESETS = {
    # vocab, hidden, intermediate, heads, kv heads, head_dim, layers
    "llama-70b": (128256, 8192, 28672, 64, 8, 128, 80),
    "llama-405b": (128256, 16384, 53248, 128, 8, 128, 126),
}


def tensors(preset, layers):
    V, H, I, heads, kv, hd, _ = PRESETS[preset]
    q, k = heads * hd, kv * hd
    yield "model.embed_tokens.weight", [V, H]
    for L in range(layers):
        for name, shape in (("q_proj", [q, H]), ("k_proj", [k, H]), ("v_proj", [k, H]),
                            ("o_proj", [H, q])):
            yield f"model.layers.{L}.self_attn.{name}.weight", shape
        for name, shape in (("gate_proj", [I, H]), ("up_proj", [I, H]), ("down_proj", [H, I])):
            yield f"model.layers.{L}.mlp.{name}.weight", shape
        yield f"model.layers.{L}.input_layernorm.weight", [H]
        yield f"model.layers.{L}.post_attention_layernorm.weight", [H]
    yield "model.norm.weight", [H]
    yield "lm_head.weight", [V, H]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--shard-size", type=float, default=5.0, help="GiB per shard at most")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    layers = a.layers or PRESETS[a.preset][6]
    limit = int(a.shard_size * (1 << 30))
    shards, cur, size = [], [], 0
    for name, shape in tensors(a.preset, layers):
        n = 2
        for d in shape:
            n *= d
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape, n))
        size += n
    shards.append(cur)
    os.makedirs(a.out, exist_ok=True)
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        hdr, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, n in sh:
            hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
            weight_map[name] = fname
            off += n
        text = json.dumps(hdr, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)  # data start 8-byte aligned, as synth writes
        with open(os.path.join(a.out, fname), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + off)  # the data: one hole
        total += off
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    V, H, I, heads, kv, hd, _ = PRESETS[a.preset]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": I, "num_attention_heads": heads, "num_key_value_heads": kv,
           "head_dim": hd, "num_hidden_layers": layers, "vocab_size": V,
           "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f)
    print(f"{a.out}: {len(shards)} shards, {total / 1e9:.1f} GB of holes")


if __name__ == "__main__":
    main()
