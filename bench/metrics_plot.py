#!/usr/bin/env python3
"""Scrapes chatd's /metrics during a load run and draws what an operator's dashboard shows.

    bench/metrics_plot.py scrape URL OUT.jsonl STOP_FILE   # one sample a second until STOP_FILE exists
    bench/metrics_plot.py draw OUT.jsonl OUT.svg TITLE      # the panels, as an SVG

Only the standard library: the samples are parsed from the Prometheus text format, rates and
histogram quantiles are computed here the way PromQL's rate() and histogram_quantile() do
(per-second differences of counters, linear interpolation inside a bucket).
"""

import json
import math
import os
import sys
import time
import urllib.request


def parse(text):
    """{(name, frozenset(labels)): value} of one exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, rest = key.partition("{")
        labels = []
        for part in rest.rstrip("}").split('",'):
            if "=" in part:
                k, _, v = part.partition("=")
                labels.append((k, v.strip('"')))
        try:
            samples[(name, frozenset(labels))] = float(value)
        except ValueError:
            pass
    return samples


def scrape(url, out, stop_file):
    with open(out, "w") as f:
        while not os.path.exists(stop_file):
            started = time.time()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    samples = parse(response.read().decode())
                row = {"t": started, "s": [[n, sorted(l), v] for (n, l), v in samples.items()]}
                f.write(json.dumps(row) + "\n")
                f.flush()
            except OSError as e:
                print(f"scrape failed: {e}", file=sys.stderr)
            time.sleep(max(0.0, 1.0 - (time.time() - started)))


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            rows.append((row["t"], {(n, frozenset(map(tuple, l))): v for n, l, v in row["s"]}))
    return rows


def total(samples, name, **want):
    return sum(v for (n, l), v in samples.items()
               if n == name and all((k, w) in l for k, w in want.items()))


def rate(rows, name, **want):
    out = []
    for (t0, a), (t1, b) in zip(rows, rows[1:]):
        out.append((t1, max(0.0, total(b, name, **want) - total(a, name, **want)) / (t1 - t0)))
    return out


def gauge(rows, name, scale=1.0, **want):
    return [(t, total(s, name, **want) * scale) for t, s in rows]


def quantile(rows, name, q, scale=1000.0):
    """histogram_quantile(q, rate(name_bucket[1s])) per sample, times `scale` (ms)."""
    out = []
    for (t0, a), (t1, b) in zip(rows, rows[1:]):
        buckets = {}
        for (n, l), v in b.items():
            if n == name + "_bucket":
                le = dict(l)["le"]
                buckets[math.inf if le == "+Inf" else float(le)] = v - a.get((n, l), 0.0)
        bounds = sorted(buckets)
        if not bounds or buckets[bounds[-1]] <= 0:
            out.append((t1, None))
            continue
        rank = q * buckets[bounds[-1]]
        lower, below = 0.0, 0.0
        value = None
        for bound in bounds:
            count = buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    value = lower
                else:
                    value = lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
                break
            lower, below = bound, count
        out.append((t1, None if value is None else value * scale))
    return out


def panel(x0, y0, w, h, title, series, unit, start):
    """One chart: series is [(label, colour, [(t, v)])]."""
    points = [v for _, _, s in series for _, v in s if v is not None]
    top = max(points) if points else 1.0
    top = top * 1.1 if top > 0 else 1.0
    t_end = max((t for _, _, s in series for t, _ in s), default=start + 1)
    span = max(t_end - start, 1.0)
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>',
           f'<text x="{x0 + 8}" y="{y0 + 16}" font-size="13" font-weight="bold">{title}</text>']
    px, py, pw, ph = x0 + 52, y0 + 26, w - 62, h - 48
    for i in range(5):
        y = py + ph - ph * i / 4
        out.append(f'<line x1="{px}" y1="{y:.1f}" x2="{px + pw}" y2="{y:.1f}" stroke="#eee"/>')
        label = top * i / 4
        text = f"{label:.0f}" if top >= 10 else f"{label:.2f}"
        out.append(f'<text x="{px - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{text}</text>')
    for i in range(0, int(span) + 1, max(10, int(span) // 6 // 10 * 10 or 10)):
        x = px + pw * i / span
        out.append(f'<text x="{x:.1f}" y="{py + ph + 14}" font-size="10" text-anchor="middle">{i}s</text>')
    out.append(f'<text x="{x0 + w - 8}" y="{y0 + 16}" font-size="11" text-anchor="end" fill="#666">{unit}</text>')
    for n, (label, colour, data) in enumerate(series):
        path, pen = [], "M"
        for t, v in data:
            if v is None:
                pen = "M"
                continue
            x = px + pw * (t - start) / span
            y = py + ph - ph * v / top
            path.append(f"{pen}{x:.1f},{y:.1f}")
            pen = "L"
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        out.append(f'<text x="{px + 8 + 130 * n}" y="{py + 12}" font-size="11" fill="{colour}">{label}</text>')
    return out


def draw(jsonl, svg, title):
    rows = load(jsonl)
    if len(rows) < 3:
        sys.exit("too few samples to draw")
    start = rows[0][0]
    panels = [
        ("Messages", "per second", [
            ("sends acked", "#1f77b4", rate(rows, "chatd_sends_acknowledged_total")),
            ("deliveries", "#ff7f0e", rate(rows, "chatd_deliveries_total"))]),
        ("Group commit latency", "ms", [
            ("commit p50", "#2ca02c", quantile(rows, "chatd_storage_commit_seconds", 0.5)),
            ("commit p99", "#d62728", quantile(rows, "chatd_storage_commit_seconds", 0.99)),
            ("fsync p99", "#9467bd", quantile(rows, "chatd_storage_fsync_seconds", 0.99))]),
        ("Connections", "count", [
            ("authenticated", "#1f77b4", gauge(rows, "chatd_connections", state="authenticated")),
            ("handshaking", "#ff7f0e", gauge(rows, "chatd_connections", state="handshaking"))]),
        ("Requests per commit", "requests", [
            ("group size", "#8c564b", [
                (t, (s / c) if c > 0 else None) for (t, s), (_, c) in zip(
                    rate(rows, "chatd_storage_group_commit_requests_sum"),
                    rate(rows, "chatd_storage_group_commit_requests_count"))])]),
        ("Memory", "MiB", [
            ("budget used", "#17becf", gauge(rows, "chatd_memory_used_bytes", 1 / 2**20)),
            ("resident", "#7f7f7f", gauge(rows, "chatd_process_resident_memory_bytes", 1 / 2**20))]),
        ("Queues", "entries", [
            ("storage queue", "#e377c2", gauge(rows, "chatd_storage_queue_depth")),
            ("inboxes", "#bcbd22", gauge(rows, "chatd_inbox_depth"))]),
    ]
    w, h, cols = 460, 200, 2
    width, height = cols * w + 30, 40 + math.ceil(len(panels) / cols) * (h + 10) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="#f7f7f7"/>',
           f'<text x="10" y="24" font-size="15" font-weight="bold">{title}</text>']
    for i, (name, unit, series) in enumerate(panels):
        x = 10 + (i % cols) * (w + 10)
        y = 36 + (i // cols) * (h + 10)
        out += panel(x, y, w, h, name, series, unit, start)
    out.append("</svg>")
    with open(svg, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "scrape":
        scrape(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == "draw":
        draw(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
