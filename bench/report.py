#!/usr/bin/env python3
"""The summaries of bench/'s runs, and the sections of bench/RESULTS.md drawn from them.

Each script under bench/ ends its run by calling this with its run set's name. The figures
the run set's tables show, with the command, the machine, the date and the git commit, go
into bench/results/summary.json, the one committed file there besides the scenario plot; the
per-run files they came from (loadgen JSON, HdrHistogram, text, perf reports) stay local,
ignored by git. The generated sections of RESULTS.md (between `<!-- NAME:begin` and
`<!-- NAME:end -->`) and the plot are then rendered from the summary alone:

    bench/report.py scenarios COMMAND SCENARIO...    after bench/run.sh: those scenarios' rows
    bench/report.py peers COMMAND ROUNDS SCENARIO... after bench/run.sh: every target, each round
    bench/report.py profile COMMAND SCENARIO ROUNDS  after bench/profile.sh
    bench/report.py outage COMMAND LOADGEN_ARGS      after bench/bridge-outage.sh
    bench/report.py nonreader COMMAND                after bench/nonreader.sh
    bench/report.py flood COMMAND                    after bench/flood.sh
    bench/report.py faults COMMAND CYCLES            after bench/faults.sh
    bench/report.py codec COMMAND CRITERION_DIR      after bench/codec.sh
    bench/report.py bridge COMMAND RUN_JSON...       after bench/bridge.sh (one line per run)
    bench/report.py hops COMMAND LABEL RUNS          after bench/hops.sh; prints its table
    bench/report.py metrics-cost COMMAND DURABILITY FIXED_RATE RUNS
                                                     after bench/metrics-cost.sh; prints its tables
    bench/report.py metrics-knee COMMAND DURABILITY RUNS
                                                     after bench/metrics-knee.sh; prints its table
    bench/report.py before-after COMMAND KEY TITLE BEFORE AFTER SCENARIO...
                                                     after bench/before-after.sh (one section
                                                     per KEY, headed "Before and after: TITLE")
    bench/report.py scaling COMMAND RUNS             after bench/scaling.sh
    bench/report.py cluster-parts COMMAND            after bench/cluster-parts.sh
    bench/report.py handover COMMAND                 after bench/handover.sh
    bench/report.py cluster COMMAND LOADGEN_ARGS     after bench/cluster.sh
    bench/report.py cluster-knee COMMAND RUNS        after bench/cluster-knee.sh
    bench/report.py --from-summary                   every generated section and the plot, again
    bench/report.py --show hops|metrics-cost|metrics-knee
                                                     prints those tables from the summary
    bench/report.py --commit                         the commit being measured (BENCH_COMMIT)

The per-run files are read from bench/results (the names the scripts give them). Run from
anywhere; the paths are the repository's.
"""
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCH, "results")
RESULTS_MD = os.path.join(BENCH, "RESULTS.md")
SUMMARY = os.path.join(RESULTS, "summary.json")
PLOT = os.path.join(RESULTS, "latency-throughput.svg")

# The scenarios of the tables (chat-loadgen's presets) and their titles.
SCENARIOS = [
    ("dm", "dm: 500 pairs, both send"),
    ("rooms10", "rooms of 10 (100 rooms), every member sends"),
    ("rooms100", "rooms of 100 (10 rooms), every member sends"),
    ("fanout1000", "fanout: 1 room of 1000, 2 senders"),
]
IDLE = "idle10k"
TARGETS = ["chatd", "floor"]
COLORS = {"chatd": "#1f77b4", "floor": "#d62728"}
# The bar from issue 6: what the results are read against.
BAR_RATIO, BAR_P99_MS, BAR_IDLE_KIB = 0.75, 1.0, 16


# --- the run's context ---------------------------------------------------------------------

def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine():
    return {"cpu": cpu(), "nproc": os.cpu_count(), "system": platform.system(),
            "release": platform.release()}


def machine_text(m):
    return f"{m['cpu']}, {m['nproc']} logical CPUs, {m['system']} {m['release']}"


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def output(*command):
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=BENCH).stdout.strip()
    except OSError:
        return ""


def commit():
    """The build measured: BENCH_COMMIT (bench/lib.sh's build_release sets it before
    building), else HEAD, `-dirty` when tracked files other than the results differ."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    head = output("git", "rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = output("git", "status", "--porcelain", "--untracked-files=no", "--", "..",
                   ":!RESULTS.md", ":!results")
    return head + ("-dirty" if dirty else "")


def run_record(command):
    """Where a run set comes from: the command, the date, the commit, the machine, rustc."""
    return {"command": command.strip(), "date": now(), "commit": commit(), "machine": machine(),
            "rustc": output("rustc", "--version")}


def measured(path):
    """When a result file was written, UTC."""
    stamp = os.path.getmtime(path)
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_lines(name):
    with open(os.path.join(RESULTS, name)) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_summary():
    if not os.path.exists(SUMMARY):
        return {}
    with open(SUMMARY) as f:
        return json.load(f)


def write_summary(summary):
    """Indented, with lists of numbers (the plot's points) kept on one line."""
    text = json.dumps(summary, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s*([^\[\]{}\"]*?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]",
                  text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(SUMMARY, "w") as f:
        f.write(text + "\n")


def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def ms(x):
    return "–" if x is None else f"{x:.3f}"


def number(x):
    """A rate as the shell printed it: no `.0` on whole numbers."""
    return str(int(x)) if x == int(x) else repr(x)


def replace_section(text, name, new):
    """Puts `new` in place of the section between `<!-- NAME:begin` and `<!-- NAME:end -->`,
    or, the first time, at the end."""
    pattern = re.compile(rf"<!-- {name}:begin.*?<!-- {name}:end -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: new, text)
    return text.rstrip("\n") + "\n\n" + new + "\n"


# --- scenarios (bench/run.sh) --------------------------------------------------------------

def collect_scenarios(summary, command, names):
    """The rows of the scenarios just run, from their per-run files."""
    section = summary.setdefault("scenarios", {})
    section["run"] = run_record(command)
    rows = section.setdefault("rows", {})
    for scenario in names:
        row = {"run": section["run"]}
        written = [os.path.join(RESULTS, f"{scenario}-{target}-max.json") for target in TARGETS]
        written = [path for path in written if os.path.exists(path)]
        if written:
            # When the scenario was measured: its last search's end.
            row["measured"] = max(measured(path) for path in written)
        for target in TARGETS:
            entry = {}
            data = load(f"{scenario}-{target}-max.json")
            if data:
                entry["max"] = max_figures(data)
                # The plot's points: deliveries/s, p99 send -> delivery, sustained.
                entry["max"]["steps"] = [[s["deliveries_per_sec"], s["send_to_delivery"]["p99_ms"],
                                          s["sustainable"]] for s in data["steps"]
                                         if s["deliveries_per_sec"] > 0]
            data = load(f"{scenario}-{target}-half.json")
            if data:
                half = half_figures(data)
                entry["half"] = {k: half[k] for k in ("offered_rate", "p50_ms", "p99_ms", "p999_ms",
                                                      "ack_p99_ms", "check")}
                entry["half"]["cpu_us_per_delivery"] = half["server_cpu_us_per_delivery"]
            data = load(f"{scenario}-{target}.json")
            if data:
                h = data["steps"][0]["handshake"] or {}
                entry["idle"] = {
                    "bytes_per_connection": data.get("idle") and data["idle"]["bytes_per_connection"],
                    "handshake_p50_ms": h.get("p50_ms"), "handshake_p99_ms": h.get("p99_ms"),
                }
            if entry:
                row[target] = entry
        rows[scenario] = row


def max_figures(data):
    """What a `--find-max` run found: the max rate, its step's deliveries and CPU, and what
    limited the search."""
    rate = data.get("max_sustainable_rate")
    step = next((s for s in data["steps"] if s["offered_rate"] == rate and s["sustainable"]), None)
    return {
        "rate": rate,
        "deliveries_per_sec": step and step["deliveries_per_sec"],
        "search_finished": data.get("search_finished"),
        "max_p99_ms": data["options"]["max_p99_ms"],
        "server_cpu_us_per_delivery": step and step.get("server_cpu_us_per_delivery"),
        "loadgen_cpu_us_per_delivery": step and step.get("loadgen_cpu_us_per_delivery"),
        "limited_by": next((s.get("limited_by") for s in reversed(data["steps"]) if not s["sustainable"]),
                           None),
    }


def half_figures(data):
    """A fixed-rate run's latencies, CPU and check (no ack latency where nothing is acked)."""
    s = data["steps"][0]
    d = s["send_to_delivery"]
    check = s.get("check")
    return {
        "offered_rate": s["offered_rate"], "deliveries_per_sec": s["deliveries_per_sec"],
        "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "p999_ms": d["p999_ms"],
        "ack_p99_ms": s["send_to_ack"]["p99_ms"] if s["send_to_ack"]["count"] else None,
        "server_cpu_us_per_delivery": s.get("server_cpu_us_per_delivery"),
        "loadgen_cpu_us_per_delivery": s.get("loadgen_cpu_us_per_delivery"),
        "check": check and {k: check[k] for k in ("lost", "duplicated", "reordered", "gaps")},
    }


def scenario_entry(section, scenario, target, kind):
    return ((section.get("rows", {}).get(scenario) or {}).get(target) or {}).get(kind)


def plot(section, path):
    """One panel per scenario: p99 send->delivery (log ms) against delivered messages/s."""
    panel_w, panel_h, margin = 330, 260, 55
    width = margin + len(SCENARIOS) * (panel_w + margin)
    height = panel_h + 2 * margin + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
           'p99 send → delivery latency against delivered messages per second '
           '(--find-max steps; hollow: not sustained)</text>']
    for i, (scenario, title) in enumerate(SCENARIOS):
        x0, y0 = margin + i * (panel_w + margin), margin
        series = {}
        for target in TARGETS:
            found = scenario_entry(section, scenario, target, "max")
            if found:
                series[target] = sorted((d, max(p99, 0.01), sustained)
                                        for d, p99, sustained in found["steps"])
        points = [p for s in series.values() for p in s]
        out.append(f'<text x="{x0 + panel_w / 2}" y="{y0 - 8}" text-anchor="middle">{title}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{panel_w}" height="{panel_h}" '
                   'fill="none" stroke="#444"/>')
        if not points:
            continue
        xmax = max(p[0] for p in points) * 1.1
        lo = math.floor(math.log10(min(p[1] for p in points)))
        hi = math.ceil(math.log10(max(p[1] for p in points)))
        hi = max(hi, lo + 1)

        def sx(v):
            return x0 + v / xmax * panel_w

        def sy(v):
            return y0 + panel_h - (math.log10(v) - lo) / (hi - lo) * panel_h

        for e in range(lo, hi + 1):
            y = sy(10 ** e)
            out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + panel_w}" y2="{y}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end">{10 ** e:g} ms</text>')
        for k in range(0, 5):
            v = xmax * k / 4
            out.append(f'<text x="{sx(v)}" y="{y0 + panel_h + 14}" text-anchor="middle">'
                       f'{v / 1000:.0f}k</text>' if xmax >= 4000 else
                       f'<text x="{sx(v)}" y="{y0 + panel_h + 14}" text-anchor="middle">{v:.0f}</text>')
        for target, pts in series.items():
            color = COLORS[target]
            path_d = " ".join(f"{'M' if j == 0 else 'L'}{sx(p[0]):.1f},{sy(p[1]):.1f}"
                              for j, p in enumerate(pts))
            out.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            for p in pts:
                fill = color if p[2] else "white"
                out.append(f'<circle cx="{sx(p[0]):.1f}" cy="{sy(p[1]):.1f}" r="3.5" '
                           f'fill="{fill}" stroke="{color}"/>')
        out.append(f'<text x="{x0 + panel_w / 2}" y="{y0 + panel_h + 30}" '
                   'text-anchor="middle">delivered messages/s</text>')
    ly = height - 12
    for j, target in enumerate(TARGETS):
        lx = margin + j * 160
        out.append(f'<circle cx="{lx}" cy="{ly - 4}" r="4" fill="{COLORS[target]}"/>')
        label = "chatd (fsync, 2 shards)" if target == "chatd" else "floor: bare QUIC relay"
        out.append(f'<text x="{lx + 8}" y="{ly}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def render_scenarios(section):
    run = section["run"]
    lines = [
        "<!-- scenarios:begin (generated by bench/run.sh and bench/report.py; edit those, not this section) -->",
        "## Scenarios: chatd against the floor",
        "",
        "Command: `bench/run.sh [SCENARIO...]` (release build; chat-loadgen, chatd and the relay on the",
        f"same machine); this section was last rendered after `{run['command']}`.",
        f"Machine: {machine_text(run['machine'])}; {run['rustc']}. Rendered: {run['date']}.",
        "",
        "Each scenario runs against a fresh chatd (2 shards, default `fsync` durability, a new temp data",
        "directory, the per-user send rate limit lifted) and against the floor, `bench/src/bin/relay.rs`:",
        "a bare QUIC relay with chatd's own QUIC, TLS and socket settings that acks each send at once and",
        "relays it to the other members of its room (per thread, in batches, as chatd fans out): no auth,",
        "storage, sequence numbers or ordering. Both are driven the same way by `chat-loadgen` (open",
        "loop; latency from the scheduled send time). The load generator shares the machine's two cores",
        "with the server, as it does for both targets.",
        "",
        "**Max sustainable rate**: `--find-max` steps the offered rate up by 1.5x, then bisects, and keeps",
        "the highest step where the sends kept up with the schedule, every send was answered, every ack",
        "reached every member (checked entry by entry on chatd, counted on the floor), nothing failed,",
        "and p99 send → delivery stayed under the scenario's saturation bound (the p99 bound column).",
        "A step that failed on that bound alone is measured once more and the repeat decides",
        "(`--latency-retries 1`): a 10 s p99 rests on a handful of entries, and one stall should not",
        "set the ceiling. Both attempts are in the JSON.",
        "Rates are messages sent per second; deliveries per second are that times the recipients per",
        "message. A rate marked ≥ is where a search that reached `--max-steps` stopped: a lower",
        "bound. The last column is when the scenario was measured (a partial rerun updates only its",
        "own rows).",
        "",
        "| Scenario | p99 bound | chatd max msg/s | chatd deliveries/s | floor max msg/s | floor deliveries/s | chatd / floor | measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for scenario, title in SCENARIOS:
        row, bound, when = {}, "–", "–"
        for target in TARGETS:
            found = scenario_entry(section, scenario, target, "max")
            # A search cut short by --max-steps found a lower bound, not the max.
            row[target] = (found and found["rate"], found and found["deliveries_per_sec"],
                           bool(found) and found["search_finished"] is False)
            if found:
                bound = f"{found['max_p99_ms']:g} ms"
                when = section["rows"][scenario]["measured"]
        ratio = (row["chatd"][0] / row["floor"][0]) if row["chatd"][0] and row["floor"][0] else None
        ratios[scenario] = ratio
        at_least = {t: "≥ " if row[t][2] else "" for t in TARGETS}
        lines.append(f"| {title} | {bound} | {at_least['chatd']}{fmt(row['chatd'][0])} | {fmt(row['chatd'][1])} | "
                     f"{at_least['floor']}{fmt(row['floor'][0])} | {fmt(row['floor'][1])} | "
                     f"{'–' if ratio is None else f'{ratio:.2f}'} | {when} |")
    lines += [
        "",
        "**At half of each target's max rate** (10 s measured; milliseconds; CPU is the server's",
        "user + system time per live delivery, from /proc):",
        "",
        "| Scenario | Target | msg/s | p50 delivery | p99 delivery | p99.9 delivery | p99 ack | CPU-µs per delivery | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    p99_half = {}
    for scenario, title in SCENARIOS:
        for target in TARGETS:
            h = scenario_entry(section, scenario, target, "half")
            if not h:
                lines.append(f"| {title} | {target} | – | – | – | – | – | – | – |")
                continue
            check = h["check"]
            verdict = ("not run" if check is None else
                       "OK" if (check["lost"], check["duplicated"], check["reordered"], check["gaps"]) == (0, 0, 0, 0)
                       else f"lost {check['lost']}, dup {check['duplicated']}, reordered {check['reordered']}")
            if target == "chatd":
                p99_half[scenario] = h["p99_ms"]
            lines.append(f"| {title} | {target} | {fmt(h['offered_rate'])} | {ms(h['p50_ms'])} | "
                         f"{ms(h['p99_ms'])} | {ms(h['p999_ms'])} | {ms(h['ack_p99_ms'])} | "
                         f"{fmt(h['cpu_us_per_delivery'], 1)} | {verdict} |")
    idle = {t: scenario_entry(section, IDLE, t, "idle") or {} for t in TARGETS}
    lines += [
        "",
        "**Idle connections**: 10,000 authenticated connections opened over 20 s and held; the",
        "server's resident memory before and after (VmRSS), divided by the connections.",
        "",
        "| Target | Bytes per idle connection | KiB | Handshake p50 | Handshake p99 |",
        "|---|---|---|---|---|",
    ]
    for t in TARGETS:
        b = idle[t].get("bytes_per_connection")
        lines.append(f"| {t} | {fmt(b)} | {fmt(b and b / 1024, 1)} | {ms(idle[t].get('handshake_p50_ms'))} | "
                     f"{ms(idle[t].get('handshake_p99_ms'))} |")
    lines += ["", "![p99 latency against throughput](results/latency-throughput.svg)", "",
              "**Against the bar** (issue 6: at least 75% of the floor's rate, p99 ≤ 1 ms at half of",
              "chatd's max, at most 16 KiB per idle connection):", ""]
    for scenario, title in SCENARIOS:
        r, p = ratios.get(scenario), p99_half.get(scenario)
        lines.append(f"- {title}: rate {'–' if r is None else f'{r:.0%} of the floor'} "
                     f"({'meets' if r is not None and r >= BAR_RATIO else 'below'} the 75% bar); "
                     f"p99 at half rate {ms(p)} ms "
                     f"({'meets' if p is not None and p <= BAR_P99_MS else 'above'} the 1 ms bar).")
    b = idle["chatd"].get("bytes_per_connection")
    lines.append(f"- idle: {fmt(b and b / 1024, 1)} KiB per connection "
                 f"({'meets' if b is not None and b <= BAR_IDLE_KIB * 1024 else 'above'} the 16 KiB bar).")
    lines.append("<!-- scenarios:end -->")
    return "\n".join(lines)


# --- peers (bench/run.sh: chatd, the floor and the brokers, each round) --------------------

# Every target of bench/run.sh, with the durability of what it acknowledges.
PEER_TARGETS = [
    ("chatd", "fsync before the ack (group commit); QUIC + TLS 1.3"),
    ("floor", "none: a QUIC + TLS relay, acks at once, stores nothing"),
    ("nats", "none: NATS core, in memory, no acks; plain TCP"),
    ("jetstream", "fsync before the ack (file stream, `sync_interval: always`); plain TCP"),
    ("mqtt-qos0", "none: MQTT 5 QoS 0, in memory, no acks; plain TCP (Mosquitto with `set_tcp_nodelay`)"),
    ("mqtt-qos1", "broker memory before the PUBACK (QoS 1, persistence off); plain TCP, `set_tcp_nodelay`"),
]


def round_name(scenario, target, round_number):
    """The per-run file stem of one round: round 1 keeps the names the scenarios section reads."""
    return f"{scenario}-{target}" + ("" if round_number == 1 else f"-r{round_number}")


def collect_peers(summary, command, rounds, names):
    """Each round's max rate and half-rate figures of every target of the scenarios just run."""
    section = summary.setdefault("peers", {})
    section["run"] = run_record(command)
    rows = section.setdefault("rows", {})
    for scenario in names:
        if scenario == IDLE:
            continue
        row = {"run": section["run"], "rounds": []}
        for round_number in range(1, int(rounds) + 1):
            figures = {}
            for target, _ in PEER_TARGETS:
                stem = round_name(scenario, target, round_number)
                entry = {}
                data = load(f"{stem}-max.json")
                if data:
                    entry["max"] = max_figures(data)
                    entry["measured"] = measured(os.path.join(RESULTS, f"{stem}-max.json"))
                data = load(f"{stem}-half.json")
                if data:
                    entry["half"] = half_figures(data)
                if entry:
                    figures[target] = entry
            row["rounds"].append(figures)
        rows[scenario] = row


def peer_max(row, target):
    """The mean of the rounds' max rates of `target` (None when a round found none)."""
    rates = [((r.get(target) or {}).get("max") or {}).get("rate") for r in row["rounds"]]
    return statistics.mean(rates) if rates and None not in rates else None


def render_peers(section):
    run = section["run"]
    lines = [
        "<!-- peers:begin (generated by bench/run.sh and bench/report.py; edit those, not this section) -->",
        "## Against the brokers: NATS, JetStream and Mosquitto",
        "",
        f"Command: `bench/run.sh [SCENARIO...]`; this section was last rendered after `{run['command']}`.",
        f"Machine: {machine_text(run['machine'])}; {run['rustc']}. Rendered: {run['date']}.",
        "",
        "Each scenario runs against every target in turn, and the whole sequence twice (round 1, then",
        "round 2), each time on a fresh server on a free loopback port: chatd and the floor as in the",
        "section above; nats-server 2.15.1 (bench/nats-server.sh: pinned, since Debian's 2.9.10 lacks",
        "`sync_interval`) for NATS core and for JetStream; Debian's Mosquitto 2.0.11 for MQTT 5. One",
        "`chat-loadgen` drives them all with the same preset, schedule and latency definition (open",
        "loop, from the scheduled send time): `--target nats|jetstream|mqtt [--qos 0|1]`, through",
        "async-nats and rumqttc, a subject or topic per conversation, one connection per user, senders",
        "not receiving their own messages. The checker counts every target but the floor: the brokers",
        "number nothing, so each sender numbers its messages and every member must get every",
        "acknowledged message of every fellow sender once, in that sender's order (chatd is checked",
        "on its one order per conversation). On NATS core and QoS 0 nothing is acknowledged: a send",
        "counts once the client library took it, and there is no ack latency. JetStream members",
        "receive on core subscriptions: as the server routes a message, before its fsync (chatd",
        "delivers after the commit).",
        "",
        "Max msg/s is `--find-max` under the preset's p99 bound, as above; the latencies (ms), and",
        "server and load generator CPU (µs of user + system time per live delivery, from /proc), are",
        "at half of that target's max in the same round. The load generator shares the two cores:",
        "where its CPU per delivery is near or above the server's, it, not the server, set the limit.",
        "",
        "| Target | Durability of an ack |",
        "|---|---|",
    ]
    lines += [f"| {target} | {text} |" for target, text in PEER_TARGETS]
    for scenario, title in SCENARIOS:
        row = section.get("rows", {}).get(scenario)
        if not row:
            continue
        lines += ["", f"**{title}**", "",
                  "| Target | Round | max msg/s | deliveries/s | p50 | p99 | p99.9 | server CPU-µs/delivery | "
                  "load generator CPU-µs/delivery | check | chatd / target (max, mean of rounds) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        chatd = peer_max(row, "chatd")
        for target, _ in PEER_TARGETS:
            mean = peer_max(row, target)
            ratio = f"{chatd / mean:.2f}" if chatd and mean else "–"
            for number, figures in enumerate(row["rounds"], 1):
                entry = figures.get(target) or {}
                top, half = entry.get("max") or {}, entry.get("half") or {}
                check = half.get("check")
                verdict = ("–" if not half else "not run" if check is None else
                           "OK" if (check["lost"], check["duplicated"], check["reordered"], check["gaps"]) == (0, 0, 0, 0)
                           else f"lost {check['lost']}, dup {check['duplicated']}, reordered {check['reordered']}")
                at_least = "≥ " if top.get("rate") and top.get("search_finished") is False else ""
                lines.append(
                    f"| {target} | {number} | {at_least}{fmt(top.get('rate'))} | {fmt(top.get('deliveries_per_sec'))} | "
                    f"{ms(half.get('p50_ms'))} | {ms(half.get('p99_ms'))} | {ms(half.get('p999_ms'))} | "
                    f"{fmt(half.get('server_cpu_us_per_delivery'), 1)} | {fmt(half.get('loadgen_cpu_us_per_delivery'), 1)} | "
                    f"{verdict} | {ratio if number == 1 else ''} |")
    lines.append("<!-- peers:end -->")
    return "\n".join(lines)


# --- profile (bench/profile.sh) ------------------------------------------------------------

PROFILE_VARIANTS = [
    ("floor", "floor"),
    ("buffered", "chatd, `buffered`"),
    ("fsync-growing", "chatd, `fsync`, growing WAL"),
    ("fsync", "chatd, `fsync`, recycled WAL"),
]


def profile_round(name):
    """The figures of one measured run of bench/profile.sh (None when it has none)."""
    data = load(name)
    if not data or not data.get("steps"):
        return None
    s = data["steps"][0]
    d = s["send_to_delivery"]
    prof = data.get("profile") or {}
    return {
        "offered_rate": s["offered_rate"], "sends_per_sec": s["sends_per_sec"],
        "deliveries_per_sec": s["deliveries_per_sec"],
        "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "p999_ms": d["p999_ms"],
        "cpu_us_per_delivery": s.get("server_cpu_us_per_delivery"),
        "fdatasync_per_sec": prof.get("fdatasync_per_sec"),
        "context_switches_per_sec": prof.get("context_switches_per_sec"),
        "block_requests_per_sec": prof.get("block_requests_per_sec"),
        "group_commits_per_sec": prof.get("group_commits_per_sec"),
        "requests_per_group": prof.get("requests_per_group"),
        "wal_fsync_us": prof.get("wal_fsync_us"),
        "measured": measured(os.path.join(RESULTS, name)),
    }


def collect_profile(summary, command, scenario, rounds):
    """Each variant's figures: the median over the rounds (a figure missing from any round
    stays missing), with the p99's range and the last round's time."""
    section = summary.setdefault("profile", {})
    section["run"] = run_record(command)
    row = {"run": section["run"]}
    for variant, _ in PROFILE_VARIANTS:
        runs = [r for n in range(1, int(rounds) + 1)
                if (r := profile_round(f"profile-{scenario}-{variant}-r{n}.json"))]
        if not runs:
            continue
        merged = {}
        for key, value in runs[0].items():
            values = [r[key] for r in runs]
            if key == "measured":
                merged[key] = values[-1]
            elif None in values:
                merged[key] = None
            else:
                merged[key] = statistics.median(values)
        merged["rounds"] = len(runs)
        merged["p99_range_ms"] = [min(r["p99_ms"] for r in runs), max(r["p99_ms"] for r in runs)]
        row[variant] = merged
    section.setdefault("rows", {})[scenario] = row


def profile_rows(section, variants):
    """(scenario title, variant, label, figures or None) for every scenario and variant."""
    for scenario in sorted(section["rows"]):
        title = dict(SCENARIOS).get(scenario, scenario)
        for variant, label in variants:
            yield title, variant, label, section["rows"][scenario].get(variant)


def render_profile(section):
    """One scenario at one rate against the floor and chatd with each durability and WAL, with
    the server's fdatasync calls and context switches, then chatd's group commits."""
    lines = [
        "<!-- profile:begin (generated by bench/profile.sh and bench/report.py; edit those, not this section) -->",
        "## Profile: what storage and durability cost at one rate",
        "",
        "Command: `bench/profile.sh [SCENARIO [RATE]]`; this section was last rendered after",
        f"`{section['run']['command']}`. Each row is a fresh server driven at the same fixed rate for 10 s",
        "(after 2 s of warm-up; before that, the same run twice unmeasured, each followed by a",
        "compaction, which switches to a new WAL: the first frees the first WAL for reuse, the",
        "second writes over it): the floor, chatd with `storage.durability = \"buffered\"`",
        "(the WAL is written but not synced), and chatd with `fsync` (the default: a message is",
        "acknowledged and delivered after its group commit's fdatasync) writing a WAL that grows with",
        "every append (`storage.recycled_wals = 0`, as before recycling) or over a recycled WAL",
        "file (the default). CPU is the server's user + system time per live delivery (/proc);",
        "fdatasync calls and context switches are the server's, counted by `perf stat` on kernel",
        "tracepoints over 5 s of the measured phase. Each figure is the median over the rounds",
        "(the variants in turn, then again), with the range of the p99 beside it.",
        "",
        "| Scenario | msg/s | Server | rounds | p50 delivery | p99 delivery (range) | p99.9 delivery | CPU-µs per delivery | CPU / floor | fdatasync/s | messages per fdatasync | context switches per delivery | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floor_cpu = None
    for title, variant, label, v in profile_rows(section, PROFILE_VARIANTS):
        if variant == "floor":
            floor_cpu = None
        if not v:
            lines.append(f"| {title} | – | {label} | – | – | – | – | – | – | – | – | – | – |")
            continue
        cpu_us = v["cpu_us_per_delivery"]
        if variant == "floor":
            floor_cpu = cpu_us
        fsyncs, switches = v["fdatasync_per_sec"], v["context_switches_per_sec"]
        per_fsync = v["sends_per_sec"] / fsyncs if fsyncs else None
        per_delivery = switches / v["deliveries_per_sec"] if switches and v["deliveries_per_sec"] else None
        ratio = cpu_us / floor_cpu if cpu_us and floor_cpu else None
        spread = v.get("p99_range_ms")
        spread = f" ({spread[0]:.1f}–{spread[1]:.1f})" if spread else ""
        lines.append(f"| {title} | {fmt(v['offered_rate'])} | {label} | {v.get('rounds', 1)} | {ms(v['p50_ms'])} | "
                     f"{ms(v['p99_ms'])}{spread} | {ms(v['p999_ms'])} | {fmt(cpu_us, 1)} | "
                     f"{'–' if ratio is None else f'{ratio:.2f}'} | {fmt(fsyncs)} | "
                     f"{fmt(per_fsync, 1)} | {fmt(per_delivery, 1)} | {v['measured']} |")
    lines += [
        "",
        "chatd's group commits over the same 5 s: from its /metrics, the groups, the write requests",
        "per group (`chatd_storage_group_commit_requests`) and the mean of RocksDB's WAL write with",
        "its fdatasync per group (`chatd_storage_fsync_seconds`); and the block I/O requests the",
        "machine issued (`perf stat -a` on `block:block_rq_issue`: the server's writes, with the",
        "inode writes of a growing WAL and the disk cache flushes) per fdatasync.",
        "",
        "| Scenario | msg/s | Server | group commits/s | requests per group | WAL write + fdatasync, mean µs | block I/O requests per fdatasync |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, _, label, v in profile_rows(section, PROFILE_VARIANTS[1:]):
        if not v:
            continue
        fsyncs, blocks = v["fdatasync_per_sec"], v.get("block_requests_per_sec")
        per_fsync = blocks / fsyncs if blocks and fsyncs else None
        lines.append(f"| {title} | {fmt(v['offered_rate'])} | {label} | "
                     f"{fmt(v.get('group_commits_per_sec'))} | {fmt(v.get('requests_per_group'), 1)} | "
                     f"{fmt(v.get('wal_fsync_us'))} | {fmt(per_fsync, 1)} |")
    lines.append("<!-- profile:end -->")
    return "\n".join(lines)


# --- bridge outage (bench/bridge-outage.sh) ------------------------------------------------

OUTAGE_MODES = [("off", "bridge off (baseline)"), ("unreachable", "bridge on, broker unreachable"),
                ("up", "bridge on, broker up")]


def collect_outage(summary, command, loadgen):
    runs = {}
    for mode, _ in OUTAGE_MODES:
        runs[mode] = []
        for run in (1, 2, 3):
            s = load(f"outage-{mode}-{run}.json")["steps"][0]
            runs[mode].append({
                "deliveries_per_sec": s["deliveries_per_sec"],
                "p50_ms": s["send_to_delivery"]["p50_ms"], "p99_ms": s["send_to_delivery"]["p99_ms"],
                "p999_ms": s["send_to_delivery"]["p999_ms"], "ack_p99_ms": s["send_to_ack"]["p99_ms"],
                "check_ok": bool(s["check"] and s["check"]["lost"] == 0 and s["check"]["duplicated"] == 0
                                 and s["check"]["reordered"] == 0),
            })
    summary["outage"] = {"run": run_record(command), "loadgen": loadgen, "runs": runs}


def render_outage(section):
    run = section["run"]
    rows, medians = [], {}
    for mode, label in OUTAGE_MODES:
        runs = section["runs"][mode]
        med = {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms", "p999_ms", "ack_p99_ms")}
        medians[mode] = med
        rows.append((label, med, all(r["check_ok"] for r in runs),
                     statistics.median(r["deliveries_per_sec"] for r in runs)))
    base = medians["off"]
    lines = [
        "<!-- outage:begin (generated by bench/bridge-outage.sh; edit the script, not this section) -->",
        "## Bridge outage: chat latency while the broker is unreachable",
        "",
        f"Command: `{run['command']}` → `chat-loadgen {section['loadgen']}` against three fresh daemons, three",
        "interleaved runs each (medians shown), 10 s measured. Machine: "
        f"{machine_text(run['machine'])}. Run: {run['date']}.",
        "",
        "\"Unreachable\" configures the bridge with an AMQP URL where nothing listens: every event",
        "still goes to the outbox in the same commit, the backlog grows on disk, and the bridge",
        "retries with backoff. The baseline is the same daemon with the bridge off, in the same run.",
        "",
        "| Daemon | deliveries/s | p50 delivery ms | p99 delivery ms | p99.9 delivery ms | p99 ack ms | p99 / baseline | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, med, ok, dps in rows:
        ratio = med["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        lines.append(f"| {label} | {dps:,.0f} | {med['p50_ms']:.3f} | {med['p99_ms']:.3f} | "
                     f"{med['p999_ms']:.3f} | {med['ack_p99_ms']:.3f} | {ratio:.2f} | {'OK' if ok else 'FAILED'} |")
    lines.append("<!-- outage:end -->")
    return "\n".join(lines)


# --- non-readers (bench/nonreader.sh) ------------------------------------------------------

def collect_nonreader(summary, command):
    summary["nonreader"] = {"run": run_record(command), "runs": load_lines("nonreader.jsonl")}


def render_nonreader(section):
    run, m = section["run"], section["run"]["machine"]

    def mib(b):
        return f"{b / 2**20:,.1f} MiB"

    rows = []
    for r in section["runs"]:
        budget = r["daemon_memory"] or 0
        bound = (f"user budget 16 MiB x {r['accounts']} account(s)" if not budget
                 else f"daemon budget {mib(budget)}")
        pinned = r["rss_peak"] - r["rss_connected"]
        over_baseline = max(0, r["rss_peak"] - max(r["rss_readers_peak"], r["rss_connected"]))
        rows.append(
            f"| {r['accounts']} x {r['devices']} = {r['connections']} | {r['requests_per_connection']} "
            f"| {mib(r['unbudgeted_bytes'])} | {bound} | {mib(r['rss_before'])} "
            f"| {mib(r['rss_readers_peak'])} | {mib(r['rss_connected'])} | {mib(r['rss_peak'])} "
            f"| {mib(pinned)} | {mib(over_baseline)} | {'yes' if r['other_client_answered'] else 'no'} "
            f"({r['other_client_ping_ms']:.1f} ms) |")
    return f"""<!-- nonreader:begin (generated by bench/nonreader.sh; edit the script, not this section) -->
## Non-readers: memory that clients which never read can pin

Command: `{run['command']}` → `nonreader --accounts A --devices 4 --requests N
[--daemon-memory BYTES]` (release build). Machine: {m['cpu']}, {m['nproc']} logical CPUs,
{m['system']} {m['release']}. Run:
{run['date']}.

Each connection has a 2 KiB QUIC receive window, pipelines N history pages of a room's
first 100 entries (99 messages of 16 KiB: about 1.6 MB per answer) and never reads. The
baseline, in the same run, is the same requests served to 4 connections that read every
answer: what storage reads, caches and the allocator hold while serving them. "Pinned" is
the daemon's peak VmRSS over 10 s of non-readers minus its RSS with every non-reader
connected (connection state is not pinned answers; the daemon budget charges it too, 48 KiB
a connection, so the 1 000 connections use 47 MiB of the 256 MiB before any answer); it is
what the bound must cover. "Over baseline" is the peak above the readers' peak, at least 0.
"Unbudgeted" is what the answers would hold if the daemon queued them all.

| Connections | Pages each | Unbudgeted | Bound | RSS before | Baseline peak | Connected | Peak | Pinned | Over baseline | Another client served |
|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n<!-- nonreader:end -->"


# --- floods (bench/flood.sh) ---------------------------------------------------------------

def collect_flood(summary, command):
    summary["flood"] = {"run": run_record(command), "runs": load_lines("flood.jsonl")}


def render_flood(section):
    run, m = section["run"], section["run"]["machine"]

    def ms_of(us):
        return f"{us / 1000:.2f}"

    rows = []
    for i, r in enumerate(section["runs"], 1):
        for phase, label, ratio in [
                ("alone", "alone (baseline)", None),
                ("initials", f"{r['initials_per_sec']:,} Initials/s ({r['initials_sent']:,} sent)", "p99_ratio_initials"),
                ("silent", f"{r['silent_per_sec']} silent connections/s ({r['silent_opened']:,} opened, "
                           f"{r['silent_refused']:,} refused)", "p99_ratio_silent")]:
            p = r[phase]
            rows.append(f"| {i} | {label} | {p['pings']:,} | {ms_of(p['p50_us'])} | {ms_of(p['p99_us'])} "
                        f"| {ms_of(p['max_us'])} | {'1.00' if ratio is None else f'{r[ratio]:.2f}'} |")
    return f"""<!-- flood:begin (generated by bench/flood.sh; edit the script, not this section) -->
## Floods: an authenticated client during handshake and connection floods

Command: `{run['command']}` → `flood --secs 10 --initials-per-sec 20000 --silent 3000
--silent-per-sec 500` (release build), twice. Machine: {m['cpu']}, {m['nproc']} logical CPUs,
{m['system']} {m['release']}. Run:
{run['date']}.

One authenticated client sends `Ping` after `Ping` for 10 s alone (the baseline), then
while 64 sockets send QUIC v1 Initials with random connection ids and undecryptable
payloads (what a spoofing attacker can send), then while silent connections complete their
handshake and open no stream (the daemon's defaults: at most 10 000 unauthenticated, QUIC
Retry beyond 1 000, each closed at the 10 s authentication timeout). The floods run in a
child process at `nice -n 19`, so that on the machine's two shared cores the daemon and the
measuring client take precedence over making the flood (an attacker makes it elsewhere);
the daemon's own work on the flood is what the ratio shows. Target: p99 within 20 % of the
baseline (ratio at most 1.20).

| Run | Phase | Pings | p50 ms | p99 ms | max ms | p99 / baseline |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n<!-- flood:end -->"


# --- the fault suite (bench/faults.sh) -----------------------------------------------------

def collect_faults(summary, command, cycles):
    # Each run's figures without the per-cycle restart times (the table shows their spread).
    runs = [{k: v for k, v in r.items() if k != "restart_to_ready_ms_per_cycle"}
            for r in load_lines("faults.jsonl")]
    summary["faults"] = {"run": run_record(command), "cycles": cycles, "runs": runs}


def render_faults(section):
    run, m = section["run"], section["run"]["machine"]

    def spread(s):
        if not s or not s["n"]:
            return "–"
        return f"{s['min']:.0f} / {s['p50']:.0f} / {s['p90']:.0f} / {s['max']:.0f}"

    rows = []
    for r in section["runs"]:
        label = {"kill": f"SIGKILL x {r['cycles']}, {r['durability']}",
                 "stop": f"SIGSTOP 10 s x {r['cycles']}",
                 "full": f"disk full 5 s x {r['cycles']}"}[r["scenario"]]
        errors = ", ".join(f"{n:,} {e}" for e, n in r["errors"].items()) or "none"
        heard = sum(listener["entries"] for listener in r["listeners"])
        gaps = sum(listener["gaps_paged"] for listener in r["listeners"])
        times = {"kill": f"restart {spread(r['restart_to_ready_ms'])}; kill to all reconnected "
                         f"{spread(r['kill_to_all_reconnected_ms'])}",
                 "stop": f"SIGCONT to all connected {spread(r['recovery_ms'])}",
                 "full": f"space freed to next ack {spread(r['recovery_ms'])}; "
                         f"{r['storage_log_lines']} log lines"}[r["scenario"]]
        verdict = "pass" if not r["failures"] else "FAIL: " + "; ".join(r["failures"])
        rows.append(f"| {label} | {r['seconds']} | {r['sends']:,} | {r['acked']:,} | {errors} | {r['unacked_but_stored']:,} "
                    f"| {r['duplicates']} | {r['acked_lost']} | {heard:,} ({gaps} gaps paged) | {times} | {verdict} |")
    return f"""<!-- faults:begin (generated by bench/faults.sh; edit the script, not this section) -->
## Reliability: the fault suite

Command: `{run['command']}` (`make faults`; `FAULT_CYCLES={section['cycles']}`), release build. Machine:
{m['cpu']}, {m['nproc']} logical CPUs, {m['system']} {m['release']}. Run:
{run['date']}.

Each run starts `chatd` (2 shards) on a data dir it keeps and loads it with chat-sdk
clients as an app runs them (reconnect with backoff, unanswered sends resent with their op
ids, resume from cursors): 6 senders at 200 messages/s each over a direct conversation with
the listener `ear-0` and two rooms; `ear-0` and `ear-1` only listen. Then the fault, then the
checks against the daemon's history: every acknowledged send stored exactly once at its
acked seq, no op stored twice, each conversation's seqs contiguous from 1, each listener
heard every entry of its conversations exactly once and in order. Times in ms as
min / median / p90 / max over the cycles. "Restart" is process start to its first answered
QUIC handshake; "kill to all reconnected" is from the SIGKILL to the moment all 8 clients
are connected again (the restart included). Sends answered with an error (`UNAVAILABLE`
while the disk is full) were not acknowledged; "unacked but stored" counts those the daemon
stored anyway (a send whose answer was lost with the process, stored once: allowed).
While the disk is full every commit fails at once and the daemon logs it once, then every
10 s with a count, then once when writes succeed again ("log lines"). RocksDB's recovery
from a full disk checks the free space every 5 s, so the first acknowledgement after the
space is freed comes within about 5 s.

| Fault | s | Sends | Acked | Errors | Unacked but stored | Duplicates | Acked lost | Entries heard | Times (ms) | Checks |
|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n<!-- faults:end -->"


# --- codec (bench/codec.sh) ----------------------------------------------------------------

CODEC_GROUPS = [("message_100B", "100-byte chat message event"),
                ("history_page_100", "history page of 100 messages")]


def collect_codec(summary, command, criterion):
    def median_ns(group, fn):
        with open(os.path.join(criterion, group, fn, "new", "estimates.json")) as f:
            return json.load(f)["median"]["point_estimate"]

    rows = []
    for group, label in CODEC_GROUPS:
        base = median_ns(group, "copy_baseline")
        for fn in ("encode", "decode"):
            ns = median_ns(group, fn)
            rows.append({"frame": label, "operation": fn, "median_ns": ns, "baseline_ns": base,
                         "ratio": ns / base})
    summary["codec"] = {"run": run_record(command), "rows": rows}


def render_codec(section):
    run = section["run"]
    rows = [f"| {r['frame']} | {r['operation']} | {r['median_ns']:,.1f} ns | {r['baseline_ns']:,.1f} ns | "
            f"{r['ratio']:.1f}x |" for r in section["rows"]]
    return f"""<!-- codec:begin (generated by bench/codec.sh; edit the script, not this section) -->
## Codec: encode and decode of the hot frames

Command: `{run['command']}` → `cargo bench -p chat-bench --bench codec`
(criterion, release profile: fat LTO, one codegen unit, mimalloc).
Machine: {machine_text(run['machine'])}; {run['rustc']}.
Run: {run['date']}.

The baseline is copying the encoded frame's bytes into a reused buffer, measured in the same
run: the floor any codec pays. Ratios (codec / copy) are what to compare across machines;
the absolute medians drift on shared machines.

| Frame | Operation | Median | Copy baseline | Ratio to copy |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n<!-- codec:end -->"


# --- bridge (bench/bridge.sh) --------------------------------------------------------------

def collect_bridge(summary, command, lines):
    runs = [json.loads(line) for line in lines]
    summary["bridge"] = {
        "run": run_record(command),
        "broker": output("rabbitmqctl", "version") or "unknown",
        "runs": runs,
        "median_ratio": statistics.median(r["ratio"] for r in runs),
        "median_bincode_ratio": statistics.median(r["bincode_ratio"] for r in runs),
    }


def render_bridge(section):
    run, runs = section["run"], section["runs"]
    rows = "\n".join(
        f"| {i + 1} | {r['events']:,} | {r['baseline_per_sec']:,} | {r['bridge_per_sec']:,} | {r['ratio']:.2f} | "
        f"{r['bincode_per_sec']:,} | {r['bincode_ratio']:.2f} |"
        for i, r in enumerate(runs))
    return f"""<!-- bridge:begin (generated by bench/bridge.sh; edit the script, not this section) -->
## Bridge: events per second to RabbitMQ with publisher confirms

Command: `{run['command']}` → `target/release/bridge` (bench/src/bin/bridge.rs), three runs.
Machine: {machine_text(run['machine'])}; {run['rustc']};
RabbitMQ {section['broker']} on 127.0.0.1. Run: {run['date']}.

The outbox holds {runs[0]['events']:,} `message.created` events (a daemon that ran while the broker
was away); chatd starts with the broker back and the time until the bridge has every event
confirmed is measured (start-up included). The baseline, measured in the same run, is lapin
alone publishing the same payloads to the same broker in the same windows of
{runs[0]['window']} confirms, without reading the outbox or writing the cursor. Both exchanges
have a durable queue bound, so the broker routes and stores every message. The bridge then
publishes the same outbox again with `payload = "bincode"` (each stored JSON record converted
to `chat_protocol::events::EventRecord` at publish time).

| Run | Events | Baseline (lapin alone, JSON) events/s | bridge, JSON events/s | JSON / baseline | bridge, bincode events/s | bincode / baseline |
|---|---|---|---|---|---|---|
{rows}

Median ratio: **{section['median_ratio']:.2f}** with JSON, **{section['median_bincode_ratio']:.2f}** with bincode. The absolute rates are the broker's (one Erlang node on the
same 2-core machine, persistent messages); the ratio is what the bridge adds.
<!-- bridge:end -->"""


# --- hops (bench/hops.sh): a table printed, not a section ---------------------------------

def collect_hops(summary, command, label, runs_file):
    """RUNS holds `SCENARIO MESSAGES WAKEUPS DELIVERIES SENDS` per scenario (the deltas of
    chatd's /metrics); the rate, CPU and p99 come from the scenario's loadgen JSON."""
    rows = []
    for line in open(runs_file):
        scenario, m, w, d, sends = line.split()
        m, w, d, sends = int(m), int(w), int(d), int(sends)
        data = load(f"hops/{scenario}.json") or {}
        steps = data.get("steps") or [{}]
        rows.append({
            "scenario": scenario, "rate": (data.get("options") or {}).get("rate"),
            "sends": sends, "deliveries": d, "inbox_messages": m, "inbox_wakeups": w,
            "hops_per_delivery": m / d if d else None, "wakeups_per_delivery": w / d if d else None,
            "hops_per_send": m / sends if sends else None,
            "cpu_us_per_delivery": steps[-1].get("server_cpu_us_per_delivery"),
            "p99_ms": (steps[-1].get("send_to_delivery") or {}).get("p99_ms"),
        })
    summary["hops"] = {"run": run_record(command), "label": label, "rows": rows}


def render_hops(section):
    def two(x):
        return "-" if x is None else f"{x:.2f}"

    out = [f"chatd {section['label']}, release, 2 shards, fsync; counts from /metrics over the whole run;",
           "server CPU per delivery and p99 send -> delivery from chat-loadgen (one run: indicative)",
           f"{'scenario':<10} {'msg/s':>6} {'sends':>8} {'deliveries':>11} {'hops/dlv':>9} {'wakeups/dlv':>12} "
           f"{'hops/send':>10} {'cpu us/dlv':>11} {'p99 ms':>7}"]
    for r in section["rows"]:
        rate = "-" if r["rate"] is None else number(r["rate"])
        cpu_us = "-" if r["cpu_us_per_delivery"] is None else f"{r['cpu_us_per_delivery']:.1f}"
        out.append(f"{r['scenario']:<10} {rate:>6} {r['sends']:>8} {r['deliveries']:>11} "
                   f"{two(r['hops_per_delivery']):>9} {two(r['wakeups_per_delivery']):>12} "
                   f"{two(r['hops_per_send']):>10} {cpu_us:>11} {two(r['p99_ms']):>7}")
    return "\n".join(out)


# --- scaling with cores (bench/scaling.sh) ---------------------------------------------------

SCALING_LAYOUTS = [
    ("chatd-1s-1c", "chatd, 1 shard on 1 core"),
    ("chatd-2s-1c", "chatd, 2 shards on 1 core"),
    ("chatd-2s-2c", "chatd, 2 shards on 2 cores (shared)"),
    ("floor-1t-1c", "floor, 1 thread on 1 core"),
    ("floor-2t-2c", "floor, 2 threads on 2 cores (shared)"),
]


def collect_scaling(summary, command, runs_file):
    """RUNS holds `ROUND SCENARIO LAYOUT STEM HOPS|-` per run pair (STEM-max.json, the
    --find-max run; STEM-fixed.json, the fixed-rate run; HOPS, chatd's inbox messages per
    delivery over the fixed run)."""
    rows = []
    for line in open(runs_file):
        round_number, scenario, layout, stem, hops = line.split()
        found = load(os.path.relpath(stem + "-max.json", RESULTS))
        fixed = load(os.path.relpath(stem + "-fixed.json", RESULTS))
        row = {"round": int(round_number), "scenario": scenario, "layout": layout,
               "max": found and max_figures(found), "fixed": fixed and half_figures(fixed),
               "inbox_messages_per_delivery": None if hops == "-" else float(hops),
               "threads": scaling_threads(load(os.path.relpath(stem + "-threads.json", RESULTS)))}
        m = row["max"]
        if m and m["deliveries_per_sec"]:
            # Cores busy at the highest sustained step: CPU time per delivery times deliveries/s.
            for who in ("server", "loadgen"):
                cpu_us = m[f"{who}_cpu_us_per_delivery"]
                m[f"{who}_cores"] = cpu_us and cpu_us * m["deliveries_per_sec"] / 1e6
        rows.append(row)
    summary["scaling"] = {"run": run_record(command), "rows": rows}


def scaling_threads(sampled):
    """bench/thread_cpu.py's reading as cores busy per thread name (CPU seconds over the
    seconds measured), busiest first; None without a reading."""
    if not sampled or not sampled.get("seconds"):
        return None
    busy = {name: cpu / sampled["seconds"] for name, cpu in sampled["threads"].items()}
    return dict(sorted(busy.items(), key=lambda kv: -kv[1]))


def median_of(rows, pick=lambda r: r):
    """The median of `pick(row)` over `rows`, leaving out None; None when nothing is left."""
    values = [v for v in (pick(r) for r in rows) if v is not None]
    return statistics.median(values) if values else None


def render_scaling(section):
    run = section["run"]
    rounds = max((r["round"] for r in section["rows"]), default=0)
    lines = [
        "<!-- scaling:begin (generated by bench/scaling.sh and bench/report.py; edit those, not this section) -->",
        "## Scaling with cores: 1 and 2 shards",
        "",
        f"Command: `{run['command']}`, measured {run['date']} on {machine_text(run['machine'])};",
        f"{rounds} round(s), the median shown where there are more. Each row is a fresh server in one",
        "layout: pinned to CPU 0 with chat-loadgen pinned to CPU 1 (\"1 core\"; chatd pins its shards",
        "within its CPU set, so 2 shards on 1 core share it), or unpinned beside chat-loadgen (\"2",
        "cores (shared)\", bench/run.sh's layout). Max msg/s is `--find-max` under the preset's p99",
        "bound; cores busy are CPU time per delivery times deliveries per second at that rate (the",
        "server's, and chat-loadgen's: near 1.0 on a pinned core is that side's ceiling). At the",
        "fixed rate, the same for every layout, CPU is the server's user + system time per live",
        "delivery (/proc), and inbox messages per delivery are chatd's cross-thread messages",
        "(`chatd_inbox_messages_total`, as bench/hops.sh counts them); the busiest threads are",
        "the server's, by CPU over the measured phase of the fixed run (bench/thread_cpu.py; the",
        "first round's), in cores.",
    ]
    for scenario, title in SCENARIOS:
        rows = [r for r in section["rows"] if r["scenario"] == scenario]
        if not rows:
            continue
        fixed_rate = median_of(rows, lambda r: r["fixed"] and r["fixed"]["offered_rate"])
        lines += ["", f"**{title}** (fixed rate {fmt(fixed_rate)} msg/s):", "",
                  "| Layout | max msg/s | × 1 shard, 1 core | server cores busy | loadgen cores busy "
                  "| CPU-µs per delivery | p99 ms | p99.9 ms | inbox msgs per delivery "
                  "| busiest threads, cores busy |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for layout, label in SCALING_LAYOUTS:
            mine = [r for r in rows if r["layout"] == layout]
            if not mine:
                continue
            rate = median_of(mine, lambda r: r["max"] and r["max"]["rate"])
            reference = "chatd-1s-1c" if layout.startswith("chatd") else "floor-1t-1c"
            ref_rate = median_of([r for r in rows if r["layout"] == reference],
                                      lambda r: r["max"] and r["max"]["rate"])
            ratio = f"{rate / ref_rate:.2f}" if rate and ref_rate else "–"

            def cores(who):
                return median_of(mine, lambda r: r["max"] and r["max"].get(f"{who}_cores"))

            def fixed(key):
                return median_of(mine, lambda r: r["fixed"] and r["fixed"][key])

            hops = median_of(mine, lambda r: r["inbox_messages_per_delivery"])
            threads = next((r["threads"] for r in mine if r.get("threads")), None)
            busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in list(threads.items())[:4]
                                if cores >= 0.005) if threads else "–"
            lines.append(
                f"| {label} | {fmt(rate)} | {ratio} | {fmt(cores('server'), 2)} | {fmt(cores('loadgen'), 2)} "
                f"| {fmt(fixed('server_cpu_us_per_delivery'), 1)} | {ms(fixed('p99_ms'))} "
                f"| {ms(fixed('p999_ms'))} | {fmt(hops, 2)} | {busiest} |")
    lines.append("<!-- scaling:end -->")
    return "\n".join(lines)


# --- the cost of metrics (bench/metrics-cost.sh): tables printed, not a section ------------

METRICS_VARIANTS = ("off", "idle", "scraped")


def metrics_medians(rows, key):
    """Each variant's median of `key`, its ratio to `off` and its spread (max - min, in % of
    the median)."""
    values = {}
    for r in rows:
        if r[key] is not None:
            values.setdefault(r["variant"], []).append(r[key])
    base = statistics.median(values.get("off", [float("nan")]))
    medians = []
    for v in METRICS_VARIANTS:
        if v in values:
            med = statistics.median(values[v])
            medians.append({"variant": v, "median": med, "ratio_to_off": med / base,
                            "spread_percent": (max(values[v]) - min(values[v])) / med * 100})
    return medians


def collect_metrics_cost(summary, command, durability, fixed_rate, runs_file):
    """RUNS holds `max ROUND VARIANT RATE|none SCRAPES|-` and `fixed ROUND VARIANT CPU P99
    DELIVERIES/S SCRAPES|-` lines."""
    find_max, fixed = [], []
    for line in open(runs_file):
        fields = line.split()
        scrapes = None if fields[-1] == "-" else int(fields[-1])
        if fields[0] == "max":
            rate = None if fields[3] == "none" else float(fields[3])
            find_max.append({"round": int(fields[1]), "variant": fields[2], "max_rate": rate,
                             "scrapes": scrapes})
        else:
            cpu_us, p99, dps = (float(x) for x in fields[3:6])
            fixed.append({"round": int(fields[1]), "variant": fields[2], "cpu_us_per_delivery": cpu_us,
                          "p99_ms": p99, "deliveries_per_sec": dps, "scrapes": scrapes})
    summary.setdefault("metrics-cost", {})[durability] = {
        "run": run_record(command), "durability": durability, "fixed_rate": int(fixed_rate),
        "max": find_max, "max_medians": metrics_medians(find_max, "max_rate"),
        "fixed": fixed, "fixed_medians": metrics_medians(fixed, "cpu_us_per_delivery")}


def render_metrics_cost(section):
    def scrapes(r):
        return "-" if r["scrapes"] is None else str(r["scrapes"])

    def medians(rows, show):
        return [f"{m['variant']:<8} median {show(m['median'])}  ratio to off {m['ratio_to_off']:.3f}  "
                f"spread {m['spread_percent']:.1f}%" for m in rows]

    out = ["Max sustainable rate (dm, 1000 clients, p99 send -> delivery within 20 ms), "
           f"durability {section['durability']}:",
           f"{'round':>5} {'variant':<8} {'max msg/s':>10} {'scrapes':>8}"]
    for r in section["max"]:
        shown = "none" if r["max_rate"] is None else number(r["max_rate"])
        out.append(f"{r['round']:>5} {r['variant']:<8} {shown:>10} {scrapes(r):>8}")
    out += medians(section["max_medians"], lambda med: f"{med:>9.0f} msg/s")
    out += ["", f"Server CPU per delivery at {section['fixed_rate']} msg/s (dm, 20 s):",
            f"{'round':>5} {'variant':<8} {'cpu us/dlv':>10} {'p99 ms':>7} {'dlv/s':>8} {'scrapes':>8}"]
    for r in section["fixed"]:
        out.append(f"{r['round']:>5} {r['variant']:<8} {r['cpu_us_per_delivery']:>10.2f} {r['p99_ms']:>7.2f} "
                   f"{r['deliveries_per_sec']:>8.0f} {scrapes(r):>8}")
    out += medians(section["fixed_medians"], lambda med: f"{med:>8.2f} us")
    return "\n".join(out)


# --- the cost of metrics at the knee (bench/metrics-knee.sh): a table printed ---------------

KNEE_P99_MS = 20.0


def knee_crossing(points):
    """The rate where the median p99 crosses KNEE_P99_MS, interpolated linearly between the
    highest rate under it and the next rate over it; None when it is never crossed (or from
    the lowest rate on)."""
    points = sorted(points)
    for (r0, p0), (r1, p1) in zip(points, points[1:]):
        if p0 <= KNEE_P99_MS < p1:
            return r0 + (KNEE_P99_MS - p0) * (r1 - r0) / (p1 - p0)
    return None


def knee_rows(runs_file, names):
    """The runs of a knee script: one line each, `ROUND RATE VARIANT` then the figures NAMES
    (`none` or `null` for a run that produced none: a float otherwise, or a bool for `true` and
    `false`, `-` for none)."""
    def value(x):
        if x in ("none", "null", "-"):
            return None
        if x in ("true", "false"):
            return x == "true"
        return float(x)
    rows = []
    for line in open(runs_file):
        f = line.split()
        row = {"round": int(f[0]), "rate": float(f[1]), "variant": f[2]}
        row.update({name: value(x) for name, x in zip(names, f[3:])})
        rows.append(row)
    return rows


def knee_of(rows, variants):
    """Each variant's median p99 by rate, and its max rate (knee_crossing)."""
    medians, crossing = {}, {}
    for variant in variants:
        by_rate = {}
        for r in rows:
            if r["variant"] == variant and r["p99_ms"] is not None:
                by_rate.setdefault(r["rate"], []).append(r["p99_ms"])
        medians[variant] = {str(int(rate)): statistics.median(p) for rate, p in sorted(by_rate.items())}
        crossing[variant] = knee_crossing([(rate, statistics.median(p)) for rate, p in by_rate.items()])
    return medians, crossing


def collect_metrics_knee(summary, command, durability, runs_file):
    """RUNS holds `ROUND RATE VARIANT P99 DELIVERIES/S CPU_US SCRAPES|-` lines."""
    rows = knee_rows(runs_file, ["p99_ms", "deliveries_per_sec", "cpu_us_per_delivery", "scrapes"])
    for r in rows:
        r["scrapes"] = None if r["scrapes"] is None else int(r["scrapes"])
    medians, crossing = knee_of(rows, ("off", "scraped"))
    summary.setdefault("metrics-knee", {})[durability] = {
        "run": run_record(command), "durability": durability, "rows": rows,
        "median_p99_ms": medians, "max_rate": crossing,
        "ratio": (crossing["scraped"] / crossing["off"]
                  if crossing["off"] and crossing["scraped"] else None)}


def render_metrics_knee(section):
    rates = sorted({int(r["rate"]) for r in section["rows"]})
    out = [f"p99 send -> delivery (ms) by rate, dm, 1000 clients, durability {section['durability']}; "
           "each cell: the rounds, then their median:",
           f"{'msg/s':>7}  {'off':<34} {'scraped':<34}"]
    for rate in rates:
        cells = []
        for variant in ("off", "scraped"):
            runs = [r["p99_ms"] for r in section["rows"] if r["variant"] == variant and int(r["rate"]) == rate]
            shown = " ".join("-" if p is None else f"{p:.1f}" for p in runs)
            med = section["median_p99_ms"][variant].get(str(rate))
            cells.append(f"{shown} | {'-' if med is None else f'{med:.1f}'}")
        out.append(f"{rate:>7}  {cells[0]:<34} {cells[1]:<34}")
    for variant in ("off", "scraped"):
        rate = section["max_rate"][variant]
        out.append(f"max rate ({variant}): " + ("not crossed within the rates" if rate is None else f"{rate:.0f} msg/s"))
    if section["ratio"] is not None:
        out.append(f"scraped / off: {section['ratio']:.3f}")
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------

# The sections of RESULTS.md, in the order --from-summary renders them.
# --- before and after (bench/before-after.sh) -----------------------------------------------

def before_after_figures(directory, scenario):
    """Max sustainable rate and CPU per delivery at half of it, for chatd and the floor, from
    one of bench/before-after.sh's bench/run.sh runs (results/before-after/DIRECTORY)."""
    row = {}
    for target in TARGETS:
        search = load(f"before-after/{directory}/{scenario}-{target}-max.json") or {}
        half = load(f"before-after/{directory}/{scenario}-{target}-half.json") or {}
        step = (half.get("steps") or [{}])[-1]
        row[target] = {
            "max_rate": search.get("max_sustainable_rate"),
            "search_finished": search.get("search_finished"),
            "half_rate": step.get("offered_rate"),
            "deliveries_per_sec": step.get("deliveries_per_sec"),
            "cpu_us_per_delivery": step.get("server_cpu_us_per_delivery"),
            "p99_delivery_ms": (step.get("send_to_delivery") or {}).get("p99_ms"),
            "correct": half.get("correct"),
        }
    return row


def before_after_same_rate(scenario):
    """Both builds at the same rate (results/before-after/same): the rate, and per build the
    CPU per delivery of each round, their mean and spread, and whether each round was
    correct."""
    row = {}
    same = os.path.join(RESULTS, "before-after", "same")
    for when in ("before", "after"):
        prefix = f"{scenario}-{when}-"
        count = len([f for f in os.listdir(same) if f.startswith(prefix)]) if os.path.isdir(same) else 0
        rounds = []
        for round_ in range(1, count + 1):
            data = load(f"before-after/same/{prefix}{round_}.json")
            if not data or not data.get("steps"):
                continue
            step = data["steps"][-1]
            row["rate"] = step.get("offered_rate")
            rounds.append({
                "cpu_us_per_delivery": step.get("server_cpu_us_per_delivery"),
                "p99_delivery_ms": (step.get("send_to_delivery") or {}).get("p99_ms"),
                "correct": data.get("correct"),
            })
        cpus = [r["cpu_us_per_delivery"] for r in rounds if r["cpu_us_per_delivery"]]
        row[when] = {
            "rounds": rounds,
            "cpu_us_per_delivery": sum(cpus) / len(cpus) if cpus else None,
            "cpu_min": min(cpus) if cpus else None,
            "cpu_max": max(cpus) if cpus else None,
        }
    return row


# The comparison measured before comparisons had keys (RESULTS.md keeps its section).
FIRST_COMPARISON = ("sans-io", "the sans-IO core and the short path")


def before_after_comparisons(summary):
    """The summary's comparisons by key; a summary from before keys holds one, unnamed."""
    section = summary.get("before-after") or {}
    if "run" in section:
        key, title = FIRST_COMPARISON
        section = {key: dict(section, title=title)}
        summary["before-after"] = section
    return section


def collect_before_after(summary, command, key, title, before, after, names):
    comparisons = before_after_comparisons(summary)
    comparisons[key] = {
        "title": title,
        # The same-rate runs use each tree's own load generator (bench/before-after.sh).
        "loadgens": "own",
        "run": run_record(command),
        "before": before,
        "after": after,
        "scenarios": {
            scenario: {
                "before": before_after_figures("before", scenario),
                "after": before_after_figures("after", scenario),
                "same_rate": before_after_same_rate(scenario),
            }
            for scenario in names
        },
    }


def render_before_after_all(text, summary):
    """Each comparison into its own section of RESULTS.md."""
    for key, section in before_after_comparisons(summary).items():
        text = replace_section(text, f"before-after-{key}", render_before_after(key, section))
    return text


def render_before_after(key, section):
    run = section["run"]

    def ratio(a, b):
        return a / b if a and b else None

    lines = [
        f"<!-- before-after-{key}:begin (generated by bench/before-after.sh and bench/report.py; edit those, not this section) -->",
        f"## Before and after: {section['title']}",
        "",
        f"Command: `{run['command']}`, measured {run['date']} on {machine_text(run['machine'])}.",
        f"Before is commit `{section['before']}`, after is `{section['after']}`; each ran",
        "`bench/run.sh` (its own scripts, load generator and floor) against chatd and the floor in",
        "the same run, one after the other. Absolute rates drift on this shared machine, so the",
        "comparison is each run's ratio to its own floor: max sustainable rate (p99 delivery under",
        "20 ms), and the server's CPU (user + system, /proc) per delivery at half of each target's",
        "max. A higher rate ratio and a lower CPU ratio are better; CPU at each target's own half",
        "rate favours the faster one (more amortised), so the second table compares CPU at equal load.",
        "",
        "| Scenario | | chatd max sends/s | floor max sends/s | chatd / floor rate | chatd CPU-µs per delivery | floor CPU-µs per delivery | chatd / floor CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario, runs in section["scenarios"].items():
        for when in ("before", "after"):
            chatd, floor = runs[when]["chatd"], runs[when]["floor"]
            rate = ratio(chatd["max_rate"], floor["max_rate"])
            cpu_ratio = ratio(chatd["cpu_us_per_delivery"], floor["cpu_us_per_delivery"])
            lines.append(
                f"| {scenario if when == 'before' else ''} | {when} | {fmt(chatd['max_rate'])} | "
                f"{fmt(floor['max_rate'])} | {fmt(rate, 2)} | "
                f"{fmt(chatd['cpu_us_per_delivery'], 1)} | {fmt(floor['cpu_us_per_delivery'], 1)} | "
                f"{fmt(cpu_ratio, 2)} |")
    lines += [
        "",
        "Both chatd builds at the same rate (the before run's half rate), " + (
            "each with its own tree's load" if section.get("loadgens") == "own"
            else "with this tree's load"),
        "generator, alternating before/after, round after round; the server's CPU per delivery,",
        "mean and range over the rounds (each round's figure in bench/results/summary.json):",
        "",
        "| Scenario | msg/s | rounds | CPU-µs per delivery before (range) | after (range) | after / before | rounds where after is lower |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, runs in section["scenarios"].items():
        same = runs.get("same_rate") or {}
        b, a = same.get("before") or {}, same.get("after") or {}
        before, after = b.get("cpu_us_per_delivery"), a.get("cpu_us_per_delivery")
        pairs = list(zip(b.get("rounds") or [], a.get("rounds") or []))
        lower = sum(1 for rb, ra in pairs
                    if rb["cpu_us_per_delivery"] and ra["cpu_us_per_delivery"]
                    and ra["cpu_us_per_delivery"] < rb["cpu_us_per_delivery"])
        lines.append(f"| {scenario} | {fmt(same.get('rate'))} | {len(b.get('rounds') or [])} | "
                     f"{fmt(before, 1)} ({fmt(b.get('cpu_min'), 1)}–{fmt(b.get('cpu_max'), 1)}) | "
                     f"{fmt(after, 1)} ({fmt(a.get('cpu_min'), 1)}–{fmt(a.get('cpu_max'), 1)}) | "
                     f"{fmt(ratio(after, before), 3)} | {lower} of {len(pairs)} |")
    lines.append(f"<!-- before-after-{key}:end -->")
    return "\n".join(lines)



# --- a partition's store handed over (bench/handover.sh) -----------------------------------

def collect_handover(summary, command):
    summary["handover"] = {"run": run_record(command), "lines": load_lines("handover.jsonl")}


def render_handover(section):
    run, lines = section["run"], section["lines"]
    m = run["machine"]
    givers = {"kill": "SIGKILLed (a failover)",
              "close": "closed, not flushed (a hand-over before)",
              "flush": "flushed, then closed (a hand-over now)"}
    out = ["<!-- handover:begin (generated by bench/handover.sh; edit the script, not this section) -->",
           "## A partition's store handed over",
           "",
           f"Command: `{run['command']}` → `cluster-parts handover --count N --rounds R` (release",
           f"build). Machine: {m['cpu']}, {m['nproc']} logical CPUs, {m['system']} {m['release']}. Run:",
           f"{run['date']}, commit {run['commit']}.",
           "",
           "A writer commits N outbox events with chatd's buffered durability (in the WAL), then",
           "is SIGKILLed, or stops its storage thread and closes the store, flushing its",
           "memtables first or not (the flush and the close timed together); the three in turn,",
           "in another order each round. Then the next owner's steps, each timed: the format",
           "check as it was (a read-only open of every column family, which replays the whole",
           "WAL), as it is (a read-only open of the family that holds the stamp: the whole WAL is",
           "still read, only that family's records go into a memtable), the two in turn, and",
           "`Store::open` (the check, then the read-write open: WAL replayed, what it held",
           "flushed). \"Open, before\" is the open with the old check, computed from the three",
           "measured here: open - check + old check. \"Moved\" is the giver's flush and close plus",
           "the next owner's open: what the partition is unserved for besides etcd; its ratio is",
           "to the hand-over before (the closed store's close and its open before), in the same",
           "run. Medians over the rounds. The writer ran on this machine, so the WAL is in the",
           "page cache: a new owner on another machine (a moved volume) reads it cold, and its",
           "replay costs more than here.",
           "",
           "| Events | Giver | rounds | flush and close ms | check, every family ms | check, the stamp's family ms "
           "| open ms | open, before ms | moved ms | moved / hand-over before |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for events in sorted({line["events"] for line in lines}):
        rows = {how: [l for l in lines if l["events"] == events and l["how"] == how]
                for how in givers}
        med = {how: {k: median_of(rs, lambda r, k=k: r[k])
                     for k in ("gave_ms", "check_all_ms", "check_ms", "open_ms")}
               for how, rs in rows.items() if rs}
        before = None
        if "close" in med:
            c = med["close"]
            before = c["gave_ms"] + c["open_ms"] - c["check_ms"] + c["check_all_ms"]
        for how, label in givers.items():
            if how not in med:
                continue
            x = med[how]
            open_before = x["open_ms"] - x["check_ms"] + x["check_all_ms"]
            moved = x["gave_ms"] + x["open_ms"]
            ratio = f"{moved / before:.2f}" if before else "–"
            out.append(f"| {events:,} | {label} | {len(rows[how])} | {x['gave_ms']:,.0f} "
                       f"| {x['check_all_ms']:,.0f} | {x['check_ms']:,.0f} | {x['open_ms']:,.0f} "
                       f"| {open_before:,.0f} | {moved:,.0f} | {ratio} |")
    out.append("<!-- handover:end -->")
    return "\n".join(out)


# --- the cluster's candidate parts (bench/cluster-parts.sh) --------------------------------

def collect_cluster_parts(summary, command):
    summary["cluster-parts"] = {"run": run_record(command),
                                "lines": load_lines("cluster-parts.jsonl")}


def render_cluster_parts(section):
    run, lines = section["run"], section["lines"]
    by = lambda test: [line for line in lines if line["test"] == test]  # noqa: E731
    names = {"chatd": "chatd's storage thread (RocksDB, fsync, group commit)",
             "etcd": "etcd put (3 members, raft, fsync)",
             "quorum": "RabbitMQ quorum queue, publish confirmed (3 nodes)",
             "stream": "RabbitMQ stream, publish confirmed (3 nodes)"}
    out = [f"<!-- cluster-parts:begin (generated by bench/cluster-parts.sh; edit the script, not this section) -->",
           "## The cluster's candidate parts, on loopback",
           "",
           f"Command: `{run['command']}` (release build; `cluster-parts`, bench/src/bin/cluster-parts.rs).",
           f"Machine: {machine_text(run['machine'])}. Run: {run['date']}, commit {run['commit']}.",
           "Each engine is a cluster of three on 127.0.0.1 on the one disk, so every replica's fsync",
           "lands on the same device: a floor for what three machines would cost, not a ceiling.",
           "Payloads are 200 bytes. docs/SCALING.md reads these figures.",
           "",
           "### A durable write, acknowledged",
           "",
           "Medians of the runs (each row: N writes from W writers, each waiting for its own",
           "acknowledgement). Ratio: the engine's p50 over chatd's at the same W.",
           "",
           "| Store | writers | runs | p50 ms | p99 ms | writes/s | p50 / chatd's |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    commits = [c for c in by("commit") if c.get("stores", 1) == 1]
    base = {}
    for w in sorted({c["inflight"] for c in commits}):
        for engine in ["chatd", "etcd", "quorum", "stream"]:
            rows = [c for c in commits if c["engine"] == engine and c["inflight"] == w]
            if not rows:
                continue
            p50 = median_of([r["p50_ms"] for r in rows])
            p99 = median_of([r["p99_ms"] for r in rows])
            rate = median_of([r["per_sec"] for r in rows])
            if engine == "chatd":
                base[w] = p50
            ratio = p50 / base[w] if base.get(w) else None
            out.append(f"| {names[engine]} | {w} | {len(rows)} | {ms(p50)} | {ms(p99)} | {fmt(rate)} | {fmt(ratio, 1)} |")
    partitioned = [c for c in by("commit") if c["engine"] == "chatd" and c["inflight"] == 64]
    counts = sorted({c.get("stores", 1) for c in partitioned})
    if len(counts) > 1:
        out += ["", "### Partitions on one node: a store each, on the one disk", "",
                "chatd's commit with 64 writers spread over N stores, each with its storage thread",
                "and WAL (fsync, group commit): what a node holding N partitions pays. Ratio: writes/s",
                "over one store's.", "",
                "| Stores | runs | p50 ms | p99 ms | writes/s | writes/s / one store's |",
                "|---:|---:|---:|---:|---:|---:|"]
        one = median_of([c["per_sec"] for c in partitioned if c.get("stores", 1) == 1])
        for n in counts:
            rows = [c for c in partitioned if c.get("stores", 1) == n]
            rate = median_of([r["per_sec"] for r in rows])
            out.append(f"| {n} | {len(rows)} | {ms(median_of([r['p50_ms'] for r in rows]))} | "
                       f"{ms(median_of([r['p99_ms'] for r in rows]))} | {fmt(rate)} | "
                       f"{fmt(rate / one if one else None, 2)} |")
    hops = by("hop")
    out += ["", "### One hop between nodes and back", "",
            "| Via | runs | p50 ms | p99 ms | p50 / QUIC's |", "|---|---:|---:|---:|---:|"]
    quic = median_of([h["p50_ms"] for h in hops if h["via"] == "quic"])
    for via, title in [("quic", "QUIC stream between two endpoints"),
                       ("amqp", "RabbitMQ: queue on node 2, answer on node 1")]:
        rows = [h for h in hops if h["via"] == via]
        if rows:
            p50 = median_of([r["p50_ms"] for r in rows])
            out.append(f"| {title} | {len(rows)} | {ms(p50)} | {ms(median_of([r['p99_ms'] for r in rows]))} | "
                       f"{fmt(p50 / quic if quic else None, 1)} |")
    out += ["", "### Ownership moving when its holder dies", "",
            "Time from the signal until the standby holds it (each round: a fresh holder, the",
            "signal at a different point of its keep-alive or heartbeat cycle).", "",
            "| Mechanism | signal | rounds | min ms | median ms | max ms |", "|---|---|---:|---:|---:|---:|"]
    for test, title, key in [("lease-failover", "etcd lease, TTL {ttl_s} s, election API", "kill"),
                             ("sac-failover", "RabbitMQ single active consumer, heartbeat {heartbeat_s} s", None)]:
        rows = by(test)
        modes = sorted({r.get("mode", key) for r in rows})
        for mode in modes:
            group = [r for r in rows if r.get("mode", key) == mode]
            values = [r["failover_ms"] for r in group]
            label = title.format(**group[0])
            signal = "SIGKILL" if mode == "kill" else "SIGSTOP"
            out.append(f"| {label} | {signal} | {len(values)} | {fmt(min(values))} | {fmt(median_of(values))} | {fmt(max(values))} |")
    logs = by("log-failover")
    if logs:
        out += ["", "### The replicated log's leader node killed under writes", "",
                "16 writers through node 2, each waiting for its confirm, the queue's leader on node 1,",
                "node 1 SIGKILLed a third of the way into 15 s. Every message is numbered; the queue",
                "is then read back from its start through node 2.", "",
                "| Log | confirmed | refused (nack or error) | read back | confirmed but missing | first confirm after the kill, ms | longest wait for a confirm, ms |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in logs:
            out.append(f"| {r['kind']} | {fmt(r['confirmed'])} | {fmt(r['refused'])} | {fmt(r['read_back'])} | "
                       f"{fmt(r['confirmed_missing'])} | "
                       f"{fmt(r['first_confirm_after_kill_ms'])} | {fmt(r['longest_gap_ms'])} |")
    reopens = by("reopen")
    if reopens:
        out += ["", "### A partition handed over on a shared disk", "",
                "A writer with chatd's buffered durability SIGKILLed with its events in the WAL; the",
                "next owner opens the store (`Store::open`: WAL replay, format check).", "",
                "| Events in the WAL | WAL MB | open ms |", "|---:|---:|---:|"]
        for r in reopens:
            out.append(f"| {fmt(r['events'])} | {fmt(r['wal_mb'], 1)} | {fmt(r['open_ms'])} |")
    out.append("<!-- cluster-parts:end -->")
    return "\n".join(out)


# --- the cluster under load, its serving node killed (bench/cluster.sh) -----------------------

CLUSTER_MODES = [("single", "one node, no cluster (baseline)"),
                 ("failover", "two nodes, the serving one SIGKILLed mid-run"),
                 ("spread", "three serving nodes"),
                 ("spread-failover", "three serving nodes, one SIGKILLed mid-run"),
                 ("spread-stop", "three serving nodes, one stopped (SIGTERM) mid-run"),
                 ("spread-join", "two serving nodes, a third joining mid-run"),
                 ("single-rooms", "one node, no cluster, rooms of 10 (baseline)"),
                 ("spread-rooms", "three serving nodes, rooms of 10")]

# Each run's baseline in the medians' table: the single node under the same load.
CLUSTER_BASELINES = {"single-rooms": None, "spread-rooms": "single-rooms"}


def collect_cluster(summary, command, loadgen, rooms_loadgen=None):
    runs = {mode: [] for mode, _ in CLUSTER_MODES}
    failovers = {(r.get("mode", "failover"), r["round"]): r["failover_ms"]
                 for r in load_lines("cluster-failover.jsonl")}
    for mode, _ in CLUSTER_MODES:
        for run in (1, 2, 3):
            if not os.path.exists(os.path.join(RESULTS, f"cluster-{mode}-{run}.json")):
                continue
            s = load(f"cluster-{mode}-{run}.json")["steps"][0]
            check = s["check"] or {}
            runs[mode].append({
                "deliveries_per_sec": s["deliveries_per_sec"],
                "acks_per_sec": s["acks_per_sec"],
                "p50_ms": s["send_to_delivery"]["p50_ms"], "p99_ms": s["send_to_delivery"]["p99_ms"],
                "max_ms": s["send_to_delivery"]["max_ms"], "ack_max_ms": s["send_to_ack"]["max_ms"],
                "disconnects": s["disconnects"], "reconnects": s["reconnects"],
                "lagged": s.get("lagged"),
                "lost": check.get("lost"), "duplicated": check.get("duplicated"),
                "reordered": check.get("reordered"),
                "failover_ms": failovers.get((mode, run)),
            })
    summary["cluster"] = {"run": run_record(command), "loadgen": loadgen,
                          "rooms_loadgen": rooms_loadgen, "runs": runs}


def render_cluster(section):
    run = section["run"]
    lines = [
        "<!-- cluster:begin (generated by bench/cluster.sh; edit the script, not this section) -->",
        "## Cluster: three serving nodes, and a node killed, stopped or joining under load",
        "",
        f"Command: `{run['command']}` → `chat-loadgen {section['loadgen']}`"
        + (f" (and `{section['rooms_loadgen']}` for the rooms)" if section.get("rooms_loadgen") else "")
        + ", its checker on, the",
        "clients spread over the nodes given (`--also`). "
        + ("Eight" if section.get("rooms_loadgen") else "Six")
        + " runs per round, interleaved, on one",
        "etcd member and one partitions directory (a 2 s lease):",
        "",
        "- one chatd without a cluster (the baseline);",
        "- two nodes, 4 partitions, one serving and one standing by (it refuses its clients, who go",
        "  to the serving node); halfway through the measured window the serving node is SIGKILLed",
        "  and the standby takes every partition when the lease expires;",
        "- three serving nodes (`cluster.peer`), 12 partitions spread over them: a client's node",
        "  forwards what other nodes' partitions hold and delivers their feeds, so most direct",
        "  conversations have their two members on different nodes;",
        "- the same, and one of the three SIGKILLed halfway: the other two take its partitions",
        "  after its lease;",
        "- the same, and one of the three stopped (SIGTERM) halfway: it hands its partitions over",
        "  to the other two while its clients are still served, then says goodbye to them;",
        "- two serving nodes with the clients, and halfway a third starts: it joins and takes the",
        "  partitions it wins (7 of the 12) from the other two by hand-over, under the load"
        + (";" if section.get("rooms_loadgen") else "."),
    ] + ([
        "- rooms of 10 (each message delivered to the 9 other members) at half the rate, on one",
        "  chatd (their baseline) and on three serving nodes, a room's members on all three and",
        "  its partition on one of them: each message goes out on its holder's feed to the",
        "  other two nodes, which deliver it to their members.",
    ] if section.get("rooms_loadgen") else []) + [
        "",
        "A client gives a silent server 1 s (`--idle-timeout-ms 1000`), standing in for the",
        "stateless reset the next node behind a load balancer sends it, then resumes on the next",
        "node, resending what was not acknowledged. `Lagged` counts the lag events the 200",
        "clients got (each followed by a catch-up). Every round shown. All the processes share",
        f"the machine's cores. Machine: {machine_text(run['machine'])}. Run: {run['date']}.",
        "",
        '"Failover" is from the SIGKILL (or SIGTERM) until the survivors hold every partition: for the standby,',
        "its `/readyz` answers 200; for three nodes, the two survivors' `/v1/status` list the 12",
        'partitions between them. "Join" is from the third node\'s start until its `/v1/status`',
        "lists the partitions it wins and all three answer `/readyz` 200. Polled every 20 ms.",
        '"Lost, duplicated, reordered" are the',
        "checker's: every acknowledged message delivered to every member exactly once, in order.",
        "",
        "| Run | round | acks/s | deliveries/s | p50 delivery ms | p99 delivery ms | max delivery ms | max ack ms | disconnects | `Lagged` | failover or join ms | lost, duplicated, reordered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, label in CLUSTER_MODES:
        for i, r in enumerate(section["runs"].get(mode, []), 1):
            failover = f"{r['failover_ms']:,.0f}" if r["failover_ms"] is not None else "-"
            check = f"{r['lost']}, {r['duplicated']}, {r['reordered']}"
            lagged = f"{r['lagged']:,}" if r.get("lagged") is not None else "-"
            lines.append(
                f"| {label} | {i} | {r['acks_per_sec']:,.0f} | {r['deliveries_per_sec']:,.0f} | "
                f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:,.0f} | {r['ack_max_ms']:,.0f} | "
                f"{r['disconnects']} | {lagged} | {failover} | {check} |")

    def median(mode, key):
        return statistics.median(r[key] for r in section["runs"][mode])

    lines += [
        "",
        "Medians against the single node under the same load, same run:",
        "",
        "| Run | deliveries/s | p50 delivery | p99 delivery |",
        "|---|---|---|---|",
    ]
    for mode, label in CLUSTER_MODES[1:]:
        base = CLUSTER_BASELINES.get(mode, "single")
        if not base or not section["runs"].get(mode) or not section["runs"].get(base):
            continue
        lines.append(
            f"| {label} | {median(mode, 'deliveries_per_sec') / median(base, 'deliveries_per_sec'):.2f}x | "
            f"{median(mode, 'p50_ms') / median(base, 'p50_ms'):.2f}x | "
            f"{median(mode, 'p99_ms') / median(base, 'p99_ms'):.2f}x |")
    lines += [
        "",
        "The largest delivery latency of a failover round is the outage a client sees: the sends",
        "scheduled while a node was dead are acknowledged and delivered once its partitions are",
        "served again (the lease, the client's idle timeout, its reconnect). Deliveries per",
        "second count live deliveries: what a device got through the catch-up that follows a",
        "`Lagged` (every device of a node lags when its view moves a partition, when a partition's",
        "entries come from a new node or term, or when a link to a node holding partitions starts",
        "or ends) is not in them, and",
        "the checker counts it. The offered load is",
        ("the same in every run of a preset (the rooms at half the rate, each message delivered"
         " to 9 members), so deliveries per second say whether the nodes kept up; the"
         if section.get("rooms_loadgen") else
         "the same in every run, so deliveries per second say whether the nodes kept up; the"),
        "latencies say what forwarding costs on one machine whose two cores every node shares",
        "(three nodes here are not three machines' capacity).",
        "<!-- cluster:end -->",
    ]
    return "\n".join(lines)


# --- the cluster's capacity against one node (bench/cluster-knee.sh) ----------------------

def collect_cluster_knee(summary, command, runs_file):
    """RUNS holds `ROUND RATE VARIANT P99 DELIVERIES/S CORRECT` lines, VARIANT single or
    spread."""
    rows = knee_rows(runs_file, ["p99_ms", "deliveries_per_sec", "correct"])
    medians, crossing = knee_of(rows, ("single", "spread"))
    summary["cluster-knee"] = {
        "run": run_record(command), "rows": rows, "median_p99_ms": medians, "max_rate": crossing,
        "ratio": (crossing["spread"] / crossing["single"]
                  if crossing["single"] and crossing["spread"] else None)}


def render_cluster_knee(section):
    run = section["run"]
    rates = sorted({int(r["rate"]) for r in section["rows"]})

    def cell(variant, rate):
        runs = [r for r in section["rows"] if r["variant"] == variant and int(r["rate"]) == rate]
        p99 = ", ".join("-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}" for r in runs)
        med = section["median_p99_ms"][variant].get(str(rate))
        delivered = [r["deliveries_per_sec"] for r in runs if r["deliveries_per_sec"] is not None]
        failed = sum(1 for r in runs if r["correct"] is not True)
        return [p99, "-" if med is None else f"{med:.1f}",
                fmt(statistics.median(delivered)) if delivered else "-",
                "all" if failed == 0 else f"{len(runs) - failed} of {len(runs)}"]

    lines = [
        "<!-- cluster-knee:begin (generated by bench/cluster-knee.sh; edit the script, not this section) -->",
        "## Cluster capacity against one node",
        "",
        f"Command: `{run['command']}` (release build; chat-loadgen `dm`, 1000 clients, its checker",
        "on). `single` is one chatd without a cluster; `spread` is three serving nodes",
        "(`cluster.peer`) on one etcd member, 12 partitions, the clients spread over them, so",
        "most direct conversations have their two members on different nodes and most messages",
        "cross a link. Each runs 20 s at every rate, alternating at each rate, every round",
        "shown. A variant's max rate is where the median p99 send -> delivery crosses 20 ms,",
        "interpolated between the rates around the crossing (as in \"The cost of metrics\").",
        f"Machine: {machine_text(run['machine'])}. Run: {run['date']}, commit {run['commit']}.",
        "",
        "| msg/s | single: p99 of the rounds (ms) | median | deliveries/s | checked | "
        "spread: p99 of the rounds (ms) | median | deliveries/s | checked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        lines.append(f"| {fmt(rate)} | " + " | ".join(cell("single", rate) + cell("spread", rate)) + " |")
    lines.append("")
    rate = section["max_rate"]
    shown = {v: ("not crossed within the rates" if rate[v] is None else f"{fmt(rate[v])} msg/s")
             for v in ("single", "spread")}
    ratio = section["ratio"]
    lines += [
        f"**Max rate: single {shown['single']}, spread {shown['spread']}"
        + (f", ratio {ratio:.2f}**." if ratio is not None else "**."),
        "",
        "`checked`: the runs whose checker found nothing lost, duplicated or reordered (a run past",
        "its knee may end with deliveries still queued, which the checker counts as lost).",
        "Every process here (the load generator, etcd and the three nodes) shares the machine's",
        "cores: the ratio is what a message's forwarding between nodes costs in CPU, not what",
        "three machines would hold.",
        "<!-- cluster-knee:end -->",
    ]
    return "\n".join(lines)


SECTIONS = {
    "scenarios": render_scenarios,
    "peers": render_peers,
    "profile": render_profile,
    "nonreader": render_nonreader,
    "flood": render_flood,
    "faults": render_faults,
    "codec": render_codec,
    "bridge": render_bridge,
    "outage": render_outage,
    "before-after": render_before_after,
    "scaling": render_scaling,
    "cluster-parts": render_cluster_parts,
    "handover": render_handover,
    "cluster": render_cluster,
    "cluster-knee": render_cluster_knee,
}


def render(summary, names):
    """Rewrites the named sections of RESULTS.md (and the plot, with the scenarios) from the
    summary."""
    text = open(RESULTS_MD).read() if os.path.exists(RESULTS_MD) else "# chatd benchmark results\n"
    for name in names:
        if name not in summary:
            continue
        if name == "scenarios":
            plot(summary["scenarios"], PLOT)
        if name == "before-after":
            text = render_before_after_all(text, summary)
            continue
        text = replace_section(text, name, SECTIONS[name](summary[name]))
    with open(RESULTS_MD, "w") as f:
        f.write(text)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 64
    if argv[0] == "--commit":
        print(commit())
        return 0
    summary = read_summary()
    which, args = argv[0], argv[1:]
    if which == "--from-summary":
        render(summary, SECTIONS)
        print(f"{RESULTS_MD}: every section in {SUMMARY} rendered; plot in {PLOT}")
        return 0
    if which == "--show":
        if args[0] == "hops":
            print(render_hops(summary["hops"]))
        elif args[0] == "metrics-knee":
            print("\n\n".join(render_metrics_knee(section)
                                for section in summary["metrics-knee"].values()))
        else:
            print("\n\n".join(render_metrics_cost(section)
                                for section in summary["metrics-cost"].values()))
        return 0
    collectors = {
        "scenarios": lambda: collect_scenarios(summary, args[0], args[1:]),
        "peers": lambda: collect_peers(summary, args[0], args[1], args[2:]),
        "profile": lambda: collect_profile(summary, args[0], args[1], args[2] if len(args) > 2 else 1),
        "outage": lambda: collect_outage(summary, args[0], args[1]),
        "nonreader": lambda: collect_nonreader(summary, args[0]),
        "flood": lambda: collect_flood(summary, args[0]),
        "faults": lambda: collect_faults(summary, args[0], args[1]),
        "codec": lambda: collect_codec(summary, args[0], args[1]),
        "bridge": lambda: collect_bridge(summary, args[0], args[1:]),
        "hops": lambda: collect_hops(summary, args[0], args[1], args[2]),
        "metrics-cost": lambda: collect_metrics_cost(summary, args[0], args[1], args[2], args[3]),
        "metrics-knee": lambda: collect_metrics_knee(summary, args[0], args[1], args[2]),
        "before-after": lambda: collect_before_after(summary, args[0], args[1], args[2], args[3],
                                                     args[4], args[5:]),
        "scaling": lambda: collect_scaling(summary, args[0], args[1]),
        "cluster-parts": lambda: collect_cluster_parts(summary, args[0]),
        "handover": lambda: collect_handover(summary, args[0]),
        "cluster": lambda: collect_cluster(summary, args[0], args[1], args[2] if len(args) > 2 else None),
        "cluster-knee": lambda: collect_cluster_knee(summary, args[0], args[1]),
    }
    if which not in collectors:
        print(f"report.py: unknown run set {which} ({', '.join(collectors)})", file=sys.stderr)
        return 64
    collectors[which]()
    write_summary(summary)
    if which == "hops":
        print(render_hops(summary["hops"]))
    elif which == "metrics-cost":
        print(render_metrics_cost(summary["metrics-cost"][args[1]]))
    elif which == "metrics-knee":
        print(render_metrics_knee(summary["metrics-knee"][args[1]]))
    elif which == "before-after":
        render(summary, [which])
        print(render_before_after(args[1], summary["before-after"][args[1]]))
    else:
        render(summary, [which])
        print(SECTIONS[which](summary[which]))
    print(f"{SUMMARY}: {which} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
