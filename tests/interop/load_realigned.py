#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Interop check: nlsr's outputs, made from a Hugging Face hub cache, load in the real libraries.

Builds a hub cache the way huggingface_hub lays it out (blobs/<sha256>, snapshots/<commit>/ of
relative links into ../../blobs/, refs/main) from the fixtures in tests/data/hf-tiny-llama,
then:

1. checks that huggingface_hub + transformers themselves read that cache (so the layout the
   C tests build is the real one): AutoModelForCausalLM.from_pretrained("tiny/finetuned",
   cache_dir=..., local_files_only=True) gives the fixture's tensors;
2. runs `nlsr run` on the repository folders (full weights, and the PEFT adapters) and checks
   that it left the cache exactly as it was;
3. loads the realigned checkpoint with AutoModelForCausalLM.from_pretrained and the realigned
   adapter with PeftModel.from_pretrained over the sft base, and compares every tensor the
   models hold with the files as safetensors.safe_open reads them, exactly (same dtype, same
   shape, same bits), then runs one forward pass;
4. realigns plain copies of the fine-tune (BF16, F16 and F32) with `nlsr run --in-place`,
   checks that each holds exactly the tensors of the --out run, and loads it the same way.

usage: load_realigned.py [--nlsr build/nlsr] [--data tests/data]
Exit status: 0 pass, 1 fail, 77 skipped (torch, transformers, peft or safetensors missing:
the first line says "SKIPPED: <module> missing").
"""
import argparse
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
REQUIRED = ("torch", "safetensors", "transformers", "peft", "huggingface_hub")


def need_modules():
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            print(f"SKIPPED: {name} missing")
            sys.exit(SKIP)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_snapshot(cache, repo_id, src, commit):
    """Adds `src`'s files as revision `commit` of model repo_id, huggingface_hub's layout."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    blobs = os.path.join(repo, "blobs")
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(blobs, exist_ok=True)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for name in sorted(os.listdir(src)):
        digest = sha256_of(os.path.join(src, name))
        blob = os.path.join(blobs, digest)
        if not os.path.exists(blob):
            shutil.copyfile(os.path.join(src, name), blob)
        os.symlink(os.path.join("..", "..", "blobs", digest), os.path.join(snap, name))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)  # no newline, as huggingface_hub writes it
    return repo


def cache_state(cache):
    """Every entry of the cache: blobs by sha256, links by target."""
    state = {}
    for root, dirs, files in os.walk(cache):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, cache)
            if os.path.islink(p):
                state[rel] = "link " + os.readlink(p)
            elif os.path.isfile(p):
                state[rel] = "file " + sha256_of(p)
            else:
                state[rel] = "dir"
    return state


def nlsr(binary, *args):
    r = subprocess.run([binary, *args, "-q"], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"nlsr {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")


def file_tensors(folder):
    """Every tensor of a checkpoint folder (single file, shards + index, or adapter)."""
    from safetensors import safe_open

    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            for key in f.keys():
                assert key not in out, f"{folder}: {key} in two files"
                out[key] = f.get_tensor(key)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        assert set(wm) == set(out), f"{index}: weight_map and shards disagree"
    return out


def compare(what, held, files):
    """held: name -> tensor as the library loaded it; files: name -> tensor from safe_open."""
    import torch

    missing = sorted(set(files) - set(held))
    extra = sorted(set(held) - set(files))
    assert not missing, f"{what}: the library did not load {missing[:5]}"
    assert not extra, f"{what}: the library holds tensors the files lack: {extra[:5]}"
    for name, t in files.items():
        h = held[name].detach().cpu()
        assert h.dtype == t.dtype, f"{what}: {name} is {h.dtype}, the file has {t.dtype}"
        assert tuple(h.shape) == tuple(t.shape), f"{what}: {name} shape {tuple(h.shape)} != {tuple(t.shape)}"
        # bit for bit: compare the raw bytes, so that NaN payloads and -0.0 count too
        if not torch.equal(h.contiguous().view(torch.uint8), t.contiguous().view(torch.uint8)):
            raise AssertionError(f"{what}: {name} differs from the file")
    print(f"ok: {what}: {len(files)} tensors identical to the files")


def dtype_kwargs():
    """transformers renamed from_pretrained's torch_dtype to dtype (4.56)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": "auto"} if (major, minor) >= (4, 56) else {"torch_dtype": "auto"}


def forward_ok(what, model):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 9, 42, 7]])).logits
    assert torch.isfinite(logits.float()).all(), f"{what}: non-finite logits"
    print(f"ok: {what}: forward pass, logits {tuple(logits.shape)}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nlsr", default=os.path.join(root, "build", "nlsr"))
    ap.add_argument("--data", default=os.path.join(root, "tests", "data"))
    a = ap.parse_args()
    # everything is local: without this, transformers still asks the hub for files the
    # cache lacks (adapter_config.json) and retries for half a minute on a machine offline
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    need_modules()

    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    fx = os.path.join(a.data, "hf-tiny-llama")
    tmp = tempfile.mkdtemp(prefix="nlsr-interop-")
    try:
        cache = os.path.join(tmp, "hub")
        repos = {}
        for role in ("sft", "aligned", "finetuned", "lora_align", "lora_finetuned"):
            commit = hashlib.sha1(role.encode()).hexdigest()
            repos[role] = add_snapshot(cache, "tiny/" + role.replace("_", "-"),
                                       os.path.join(fx, role), commit)
        before = cache_state(cache)

        out_full = os.path.join(tmp, "realigned")
        out_lora = os.path.join(tmp, "realigned-adapter")
        nlsr(a.nlsr, "run", "--base", repos["sft"], "--aligned", repos["aligned"],
             "--finetuned", repos["finetuned"], "--out", out_full)
        nlsr(a.nlsr, "run", "--aligned", repos["lora_align"], "--finetuned",
             repos["lora_finetuned"], "--select", "all", "--out", out_lora)
        assert cache_state(cache) == before, "nlsr changed the hub cache"
        print("ok: nlsr run on hub cache repository folders left the cache unchanged")

        # 1. huggingface_hub + transformers read the layout built above
        m = AutoModelForCausalLM.from_pretrained("tiny/finetuned", cache_dir=cache,
                                                 local_files_only=True, **dtype_kwargs())
        compare("transformers from the hub cache (tiny/finetuned)", m.state_dict(),
                file_tensors(os.path.join(fx, "finetuned")))
        del m

        # 2. the realigned full checkpoint
        m = AutoModelForCausalLM.from_pretrained(out_full, **dtype_kwargs())
        compare("transformers AutoModelForCausalLM (realigned)", m.state_dict(),
                file_tensors(out_full))
        forward_ok("realigned", m)
        del m

        # 3. the same realignment in place, on a plain copy of the fine-tune (in place is
        # refused on a hub cache), for each dtype of the fixture's fine-tune: the folder it
        # leaves must load, and hold exactly the tensors of the --out run
        for variant in ("finetuned", "finetuned_f16", "finetuned_f32"):
            src = os.path.join(fx, variant)
            ref = out_full
            if variant != "finetuned":
                ref = os.path.join(tmp, "realigned-" + variant)
                nlsr(a.nlsr, "run", "--base", repos["sft"], "--aligned", repos["aligned"],
                     "--finetuned", src, "--out", ref)
            in_place = os.path.join(tmp, variant + "-in-place")
            shutil.copytree(src, in_place)
            nlsr(a.nlsr, "run", "--base", repos["sft"], "--aligned", repos["aligned"],
                 "--finetuned", in_place, "--in-place")
            compare(f"run --in-place against run --out ({variant})", file_tensors(in_place),
                    file_tensors(ref))
            m = AutoModelForCausalLM.from_pretrained(in_place, **dtype_kwargs())
            compare(f"transformers AutoModelForCausalLM ({variant} realigned in place)",
                    m.state_dict(), file_tensors(in_place))
            forward_ok(f"{variant} realigned in place", m)
            del m

        # 4. the realigned adapter over the sft base
        base = AutoModelForCausalLM.from_pretrained(os.path.join(fx, "sft"), **dtype_kwargs())
        pm = PeftModel.from_pretrained(base, out_lora)
        # get_peft_model_state_dict gives the adapter's tensors under the names the file uses
        compare("peft PeftModel (realigned adapter)", get_peft_model_state_dict(pm),
                file_tensors(out_lora))
        forward_ok("sft + realigned adapter", pm)
    except AssertionError as e:
        print(f"FAIL: {e}")
        print(f"files kept in {tmp}")
        return 1
    shutil.rmtree(tmp)
    print("all interop checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
