#!/usr/bin/env python3
"""Plots scripts/bench-growth.sh's samples (no dependencies: plain SVG) and
projects them to 24 hours of tags (86.4 million)."""
import csv
import sys

rows = [
    {k: float(v) for k, v in r.items()}
    for r in csv.DictReader(open(sys.argv[1]))
]
rows = [r for r in rows if r["tags_counted"] > 0]
if len(rows) < 3:
    sys.exit("not enough samples")

def rate(a, b):
    return (b["tags_counted"] - a["tags_counted"]) / max(b["seconds"] - a["seconds"], 1e-9)

points = []
for a, b in zip(rows, rows[1:]):
    points.append((b["tags_counted"], rate(a, b), b["rss_bytes"], b["disk_bytes"] / b["tags_counted"]))

W, H, PAD = 900, 240, 60
panels = [
    ("tags/s (between samples)", 1, 1.0),
    ("resident memory, MiB", 2, 1 / 2**20),
    ("disk bytes per tag", 3, 1.0),
]
max_x = max(p[0] for p in points)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(panels)}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H * len(panels)}" fill="white"/>']
for i, (title, col, scale) in enumerate(panels):
    top = i * H
    ys = [p[col] * scale for p in points]
    max_y = max(ys) * 1.1 or 1
    def xy(x, y):
        return (PAD + (W - 2 * PAD) * x / max_x, top + H - 30 - (H - 60) * y / max_y)
    path = " ".join(f"{'M' if j == 0 else 'L'}{xy(p[0], y)[0]:.1f},{xy(p[0], y)[1]:.1f}" for j, (p, y) in enumerate(zip(points, ys)))
    svg.append(f'<text x="{PAD}" y="{top + 18}" font-size="14">{title} against tags sent (max x: {max_x:,.0f})</text>')
    svg.append(f'<line x1="{PAD}" y1="{top + H - 30}" x2="{W - PAD}" y2="{top + H - 30}" stroke="black"/>')
    svg.append(f'<line x1="{PAD}" y1="{top + 30}" x2="{PAD}" y2="{top + H - 30}" stroke="black"/>')
    svg.append(f'<text x="4" y="{top + 34}">{max_y:,.0f}</text><text x="4" y="{top + H - 30}">0</text>')
    svg.append(f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg))

last = rows[-1]
tail = [p for p in points if p[0] >= last["tags_counted"] / 2]
avg_rate = sum(p[1] for p in tail) / len(tail)
per_tag = last["disk_bytes"] / last["tags_counted"]
print(f"tags counted: {last['tags_counted']:,.0f} in {last['seconds']:.0f} s")
print(f"rate, second half of the run: {avg_rate:,.0f} tags/s (first samples: {points[0][1]:,.0f})")
print(f"resident memory: first {points[0][2] / 2**20:,.0f} MiB, max {max(p[2] for p in points) / 2**20:,.0f} MiB, last {last['rss_bytes'] / 2**20:,.0f} MiB")
print(f"disk: {per_tag:,.1f} bytes per tag at the end ({last['disk_bytes'] / 2**20:,.0f} MiB)")
if "disk_apparent_bytes" in last:
    # The files' lengths: the engine's journals are preallocated sparse
    # files, so this counts bytes never written.
    print(f"files' lengths: {last['disk_apparent_bytes'] / last['tags_counted']:,.1f} bytes per tag "
          f"({last['disk_apparent_bytes'] / 2**20:,.0f} MiB)")
print(f"projected to 86.4 M tags: {86.4e6 * per_tag / 2**30:,.1f} GiB on disk if bytes per tag stay as now; "
      f"{86.4e6 / avg_rate / 3600:,.1f} h to ingest at the second-half rate")
