#!/usr/bin/env python3
"""Splits a perf profile of a server under load into µs of CPU per request.

    perf record -F 2000 --call-graph dwarf,16384 -p PID -- sleep 5
    perf script -F comm,tid,ip,sym | python3 scripts/perf-split.py - RATE 5 2000

RATE is the requests per second during the recording, then its seconds and
sampling frequency. Each sample is counted once: threads other than the
async workers by thread name, statistics work by its functions, and the
rest under the innermost frame that a category below recognises. The split
is approximate (a frame deep in one category can be reached from another),
but it is the same for every build, so builds compare.
"""
import collections
import sys

# Innermost match wins; the order only breaks ties within one frame.
CATEGORIES = [
    ("writev", "writev"),
    ("read_head", "poll_read_head"),
    ("read_body", "poll_read_body"),
    ("json_parse", "from_json"),
    ("appender_handoff", "event_log"),
    ("tag_writer", "allezon::ingest"),
    ("metrics", "http_metrics"),
    ("middleware", "gateway::stack"),
    ("request_id", "request_id"),
    ("handler", "routes::tags"),
    ("bare_handler", "bare_tags::user_tag"),
    ("routing", "axum::routing"),
    ("drop", "drop_in_place"),
    ("alloc", "mi_"),
]
STATISTICS = ("apply_blocking", "ingest_worker", "flush_blocking")


def main():
    source, rate, seconds, frequency = sys.argv[1:5]
    text = sys.stdin.read() if source == "-" else open(source).read()
    per_sample = 1e6 / float(frequency) / (float(rate) * float(seconds))
    counts = collections.Counter()
    for sample in text.split("\n\n"):
        lines = sample.strip().split("\n")
        if len(lines) < 2:
            continue
        thread = lines[0].split()[0]
        if any(f in sample for f in STATISTICS):
            counts["statistics"] += 1
        elif thread != "tokio-rt-worker":
            counts["thread " + thread] += 1
        else:
            counts[category(lines[1:])] += 1
    total = sum(counts.values())
    print(f"{total * per_sample:.1f} us of CPU per request")
    for name, count in counts.most_common():
        print(f"  {name:24} {count * per_sample:5.2f} us")


def category(frames):
    for frame in frames:
        for name, pattern in CATEGORIES:
            if pattern in frame:
                return name
    return "other"


if __name__ == "__main__":
    main()
