#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Summary (Markdown on stdout) and plot (SVG, drawn by hand: no numpy or matplotlib here) of
bench/amplify.sh's CSV.

    amplify_plot.py amplify.csv amplify.svg > amplify-summary.md

Medians over repetitions. Ratios against `cat` of the same input files in the same run and cache
state: `read-rate ratio` = (bytes amplify read / its seconds) / (bytes cat read / its seconds);
`time ratio` = cat seconds / amplify seconds (cat reads both whole checkpoints, amplify skips the
base's non-target tensors but also writes the output); `I/O-rate ratio` = (bytes amplify read
and wrote / its seconds) / cat's rate: how fast it drives the disk, which reads and writes
share."""
import csv
import statistics
import sys
from collections import defaultdict

MIB = 1048576.0
PRESET = ["llama-70b"]


def budget_mib(b):
    if b in ("", "-"):
        return None
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    return float(b[:-1]) * units[b[-1]] if b[-1] in units else float(b) / MIB


def load(path):
    groups = defaultdict(list)
    for r in csv.DictReader(open(path)):
        key = (int(r["layers"]), r["cache"], r["job"], r["backend"], r["budget"])
        groups[key].append(r)
        PRESET[0] = r.get("preset", PRESET[0])
    out = {}
    for key, rows in groups.items():
        med = {}
        for col in ("seconds", "bytes_read", "bytes_written", "read_mib_s", "peak_rss_mib",
                    "budget_peak_mib", "plan_bytes_read", "plan_bytes_written"):
            vals = [float(r[col]) for r in rows if r[col] not in ("", None)]
            med[col] = statistics.median(vals) if vals else None
        med["n"] = len(rows)
        out[key] = med
    return out


def summary(d):
    lines = []
    layers = sorted({k[0] for k in d})
    titles = {"amplify": "amplify (reads base targets + aligned, writes the reference)",
              "read": "the plan's reads alone (`nlsr plan --measure-read`: no compute, no writes)"}
    for L in layers:
        for cache in ("cold", "warm"):
            cat = d.get((L, cache, "cat", "-", "-"))
            if not any(k[0] == L and k[1] == cache and k[2] != "cat" for k in d):
                continue
            lines.append(f"\n### {PRESET[0]} --layers {L}, {cache} cache\n")
            if cat:
                lines.append(f"cat of the inputs: {cat['bytes_read'] / 1e9:.2f} GB in "
                             f"{cat['seconds']:.2f} s = {cat['read_mib_s']:.0f} MiB/s "
                             f"(median of {cat['n']})\n")
            for job in ("amplify", "read"):
                rows = {k: v for k, v in d.items() if k[0] == L and k[1] == cache and k[2] == job}
                if not rows:
                    continue
                lines.append(f"{titles[job]}:\n")
                lines.append("| backend | budget | seconds | read GB | written GB | read MiB/s | "
                             "read-rate ratio vs cat | time ratio vs cat | I/O-rate ratio vs cat | "
                             "peak RSS MiB | budget used MiB | plan vs run bytes |")
                lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
                for k in sorted(rows, key=lambda k: (k[3] != "uring", k[3], budget_mib(k[4]))):
                    v = rows[k]
                    rr = v["read_mib_s"] / cat["read_mib_s"] if cat else float("nan")
                    tr = cat["seconds"] / v["seconds"] if cat else float("nan")
                    io = ((v["bytes_read"] + v["bytes_written"]) / v["seconds"] /
                          (cat["bytes_read"] / cat["seconds"])) if cat else float("nan")
                    pd = ""
                    if v["plan_bytes_read"]:
                        pr = (v["plan_bytes_read"] + v["plan_bytes_written"]) / \
                             (v["bytes_read"] + v["bytes_written"]) - 1
                        pd = f"{pr * 100:+.3f}%"
                    lines.append(f"| {k[3]} | {k[4]} | {v['seconds']:.2f} | "
                                 f"{v['bytes_read'] / 1e9:.2f} | {v['bytes_written'] / 1e9:.2f} | "
                                 f"{v['read_mib_s']:.0f} | {rr:.2f} | {tr:.2f} | {io:.2f} | "
                                 f"{v['peak_rss_mib']:.0f} | {v['budget_peak_mib']:.0f} | {pd} |")
                lines.append("")
    rss = {k[0]: v["peak_rss_mib"] for k, v in d.items()
           if k[1] == "cold" and k[2] == "amplify" and k[3] == "uring" and k[4] == "512M"}
    if rss:
        lines.append(f"\n### Peak RSS at --mem-budget 512M (io_uring, cold) by model size "
                     f"({PRESET[0]})\n")
        lines.append("| layers | peak RSS MiB | limit 512 + 64 MiB |")
        lines.append("|---|---|---|")
        for L in sorted(rss):
            lines.append(f"| {L} | {rss[L]:.1f} | {'ok' if rss[L] <= 576 else 'OVER'} |")
        if len(rss) > 1:
            lo, hi = min(rss.values()), max(rss.values())
            lines.append(f"\nspread: {(hi - lo) / lo * 100:.1f}% between the smallest and the "
                         f"largest model")
    return "\n".join(lines) + "\n"


def svg(d, path):
    """Two panels: read throughput vs budget (cold and warm, io_uring, cat as dashed lines),
    and peak RSS vs budget (with budget + 64 MiB)."""
    layers = sorted({k[0] for k in d if k[2] == "amplify"},
                    key=lambda L: -sum(1 for k in d if k[0] == L and k[2] == "amplify"))
    L = layers[0] if layers else 0
    pts = {}
    for cache in ("cold", "warm"):
        pts[cache] = sorted((budget_mib(k[4]), v) for k, v in d.items()
                            if k[0] == L and k[1] == cache and k[2] == "amplify" and k[3] == "uring")
    W, H, PW, PH, M = 1620, 420, 400, 290, 70
    budgets = sorted({b for c in pts.values() for b, _ in c})
    if not budgets:
        return
    import math
    xs = [math.log2(b) for b in budgets]
    x0, x1 = min(xs) - 0.3, max(xs) + 0.3

    def X(panel, b):
        return M + panel * (PW + 2 * M) + (math.log2(b) - x0) / (x1 - x0) * PW

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    colors = {"cold": "#1f77b4", "warm": "#d62728"}

    def panel(p, title, ylabel, series, ymax, refs, marks=()):
        left, top = M + p * (PW + 2 * M), 40
        out.append(f'<text x="{left + PW / 2}" y="22" text-anchor="middle" font-size="14">'
                   f'{title}</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{PW}" height="{PH}" fill="none" '
                   f'stroke="black"/>')
        raw = ymax / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        v = 0.0
        while v <= ymax + 1e-9:
            y = top + PH - v / ymax * PH
            out.append(f'<line x1="{left}" y1="{y}" x2="{left + PW}" y2="{y}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{v:g}</text>')
            v += step
        for b in budgets:
            x = X(p, b)
            lab = f"{b / 1024:g}G" if b >= 1024 else f"{b:g}M"
            out.append(f'<text x="{x}" y="{top + PH + 18}" text-anchor="middle">{lab}</text>')
        out.append(f'<text x="{left + PW / 2}" y="{top + PH + 38}" text-anchor="middle">'
                   f'--mem-budget</text>')
        out.append(f'<text x="{left - 50}" y="{top + PH / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 {left - 50} {top + PH / 2})">{ylabel}</text>')
        for name, color, val, dash in refs:
            y = top + PH - val / ymax * PH
            out.append(f'<line x1="{left}" y1="{y}" x2="{left + PW}" y2="{y}" stroke="{color}" '
                       f'stroke-dasharray="{dash}"/>')
            out.append(f'<text x="{left + PW - 4}" y="{y - 4}" text-anchor="end" '
                       f'fill="{color}">{name}</text>')
        ly = top + 14
        for name, color, b, v in marks:
            x, y = X(p, b), top + PH - v / ymax * PH
            out.append(f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
                       f'fill="none" stroke="{color}" stroke-width="2"/>')
            out.append(f'<text x="{x + 9:.1f}" y="{y + 4:.1f}" fill="{color}">{name}</text>')
        for name, color, data in series:
            if not data:
                continue
            path = " ".join(f"{'M' if i == 0 else 'L'}{X(p, b):.1f},"
                            f"{top + PH - v / ymax * PH:.1f}" for i, (b, v) in enumerate(data))
            out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for b, v in data:
                out.append(f'<circle cx="{X(p, b):.1f}" cy="{top + PH - v / ymax * PH:.1f}" '
                           f'r="3.5" fill="{color}"/>')
            out.append(f'<text x="{left + 8}" y="{ly}" fill="{color}">{name}</text>')
            ly += 15

    # Panels 0 and 1: cold and warm throughput, each with cat of the same files as reference.
    for p_i, c in enumerate(("cold", "warm")):
        cat = d.get((L, c, "cat", "-", "-"))
        rd = [(b, v["read_mib_s"]) for b, v in pts[c]]
        io = [(b, (v["bytes_read"] + v["bytes_written"]) / MIB / v["seconds"]) for b, v in pts[c]]
        marks = [("reads alone", "#2ca02c", budget_mib(k[4]), v["read_mib_s"])
                 for k, v in d.items()
                 if k[0] == L and k[1] == c and k[2] == "read" and k[3] == "uring"]
        vals = [v for _, v in rd + io] + [m[3] for m in marks]
        if cat:
            vals.append(cat["read_mib_s"])
        if not vals:
            continue
        refs = [("cat of the inputs", "#555", cat["read_mib_s"], "6,4")] if cat else []
        panel(p_i, f"{c} cache: amplify, io_uring ({PRESET[0]}, {L} layers)", "MiB/s",
              [("read", colors["cold"], rd), ("read + written", "#ff7f0e", io)],
              max(vals) * 1.2, refs, marks)
    rss = {c: [(b, v["peak_rss_mib"]) for b, v in pts[c]] for c in pts}
    lim = [(b, b + 64) for b in budgets]
    ymax2 = max([v for c in rss.values() for _, v in c] + [v for _, v in lim]) * 1.1
    panel(2, "peak RSS (VmHWM)", "MiB",
          [(f"{c} cache", colors[c], rss[c]) for c in rss] +
          [("budget + 64 MiB", "#888", lim)], ymax2, [])
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def main():
    d = load(sys.argv[1])
    if len(sys.argv) > 2:
        svg(d, sys.argv[2])
    sys.stdout.write(summary(d))


if __name__ == "__main__":
    main()
