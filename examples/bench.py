#!/usr/bin/env python3
"""Helpers for examples/bench.sh: deterministic test images, result records, the report.

Standard library only (python3 >= 3.9). Each subcommand is one step the shell script calls:
  fill STAGING BUDGET        copy system files (and a generated log) into STAGING, BUDGET bytes
  day2 MOUNTPOINT            the "next day": delete, modify and add a few percent of files
  synth IMG SIZE FRAC SEED   a sparse image with FRAC of SIZE as data in 1 MiB pieces at spread offsets
  rand OUT SIZE SEED         SIZE incompressible bytes (AES-128-CTR over zeros, fixed key)
  zerofrac IMG [BS]          fraction of BS-byte blocks that are all zero (holes count as zero)
  record FILE KEY=VALUE...   append one measurement as a JSON line
  machine FILE SECTION:KEY=VALUE...   the run's facts (machine, settings, versions, images)
  fio-iops FILE              read IOPS from fio's JSON output
  free-port                  a free TCP port on 127.0.0.1
  peak-rss ROOT PREFIX OUT   until killed: the largest VmHWM (kB) of ROOT's descendants named PREFIX*, into OUT
  report RUNS MACHINE [--markdown F] [--json F]   the table of medians
"""
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

MiB = 1 << 20
PAGE = 4096


# ---------------------------------------------------------------- deterministic data


class Stream:
    """Deterministic incompressible bytes: AES-128-CTR over zeros, key from the seed."""

    def __init__(self, seed):
        key = hashlib.sha256(f"diskdump-bench-{seed}".encode()).hexdigest()[:32]
        self.proc = subprocess.Popen(
            ["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", key, "-iv", "0" * 32, "-in", "/dev/zero"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.proc.stdout.read(n - len(out))
            if not chunk:
                raise RuntimeError("openssl enc stopped")
            out += chunk
        return bytes(out)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def log_lines(first, nbytes):
    """Web-server-like log lines numbered from `first`, about nbytes long (compresses ~8x)."""
    out, n = [], first
    size = 0
    while size < nbytes:
        t = n // 10
        line = (
            f"2024-01-01T{t // 3600 % 24:02}:{t // 60 % 60:02}:{t % 60:02}.{n % 1000:03}Z web{n % 4} "
            f"nginx[{1000 + n % 97}]: 10.0.{n % 256}.{n * 7 % 256} - - \"GET /api/v1/items/{n * 7919 % 100000} "
            f"HTTP/1.1\" {200 if n % 17 else 404} {n * 31 % 9000 + 120} \"-\" \"curl/7.88.1\"\n"
        )
        out.append(line)
        size += len(line)
        n += 1
    return "".join(out), n


# ---------------------------------------------------------------- day-1 tree


def cost(size):
    return (size + PAGE - 1) // PAGE * PAGE


class Filler:
    def __init__(self, staging, budget):
        self.staging = staging
        self.budget = budget
        self.used = 0

    def copy_tree(self, src, dst, limit, skip=()):
        """Copies regular files, symlinks and directories of src in sorted order while they fit."""
        limit = min(limit, self.budget)
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if os.path.join(root, d) not in skip)
            rel = os.path.relpath(root, src)
            target = os.path.normpath(os.path.join(dst, rel))
            os.makedirs(target, exist_ok=True)
            self.used += PAGE
            for name in sorted(files):
                s, d = os.path.join(root, name), os.path.join(target, name)
                try:
                    st = os.lstat(s)
                    if os.path.islink(s):
                        os.symlink(os.readlink(s), d)
                    elif os.path.isfile(s) and self.used + cost(st.st_size) <= limit:
                        shutil.copy2(s, d)
                        self.used += cost(st.st_size)
                except OSError:
                    continue  # unreadable or vanished: the recipe skips it
            if self.used >= limit:
                return


def cmd_fill(staging, budget):
    budget = int(budget)
    os.makedirs(staging, exist_ok=True)
    f = Filler(staging, budget)
    text, _ = log_lines(0, int(budget * 0.08))
    with open(os.path.join(staging, "app.log"), "w") as out:
        out.write(text)
    f.used += cost(len(text))
    plan = [
        ("etc", "/etc", 0.01),
        ("doc", "/usr/share/doc", 0.10),
        ("doc-copy", os.path.join(staging, "doc"), 0.10),  # a duplicated tree
        ("bin", "/usr/bin", 0.15),
        ("bin-copy", os.path.join(staging, "bin"), 0.15),  # another duplicated tree
        ("share", "/usr/share", 1.0),
        ("lib", "/usr/lib", 1.0),
    ]
    for name, src, share in plan:
        if os.path.isdir(src):
            f.copy_tree(src, os.path.join(staging, name), f.used + int(share * budget), skip={"/usr/share/doc"})
    print(f"staged {f.used} of {budget} bytes")


# ---------------------------------------------------------------- day 2


def regular_files(top):
    out = []
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != "lost+found")
        for name in sorted(files):
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def cmd_day2(mnt):
    log = os.path.join(mnt, "app.log")
    files = [p for p in regular_files(mnt) if p != log]  # the log only grows
    total = sum(os.path.getsize(p) for p in files)
    deleted = [p for p in files[0::33] if os.path.getsize(p) <= total // 200]  # no single big file
    modified = files[11::33]
    for p in deleted:
        os.unlink(p)
    for p in modified:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            if size >= 65536:
                f.seek(size // 2)
                f.write(hashlib.sha256(p.encode()).digest() * 128)  # 4 KiB in the middle
            else:
                f.seek(0, 2)
                f.write(b"# changed on day 2\n")
    added = 0
    new = os.path.join(mnt, "day2-new")
    if os.path.isdir("/usr/include"):
        f = Filler(new, int(total * 0.03))
        f.copy_tree("/usr/include", new, f.budget)
        added = f.used
    if os.path.exists(log):
        with open(log) as f:
            lines = sum(1 for _ in f)
        text, _ = log_lines(lines, int(total * 0.01))
        with open(log, "a") as f:
            f.write(text)
        added += len(text)
    os.sync()
    print(f"day 2: {len(files)} files ({total} bytes): deleted {len(deleted)}, modified {len(modified)}, added {added} bytes")


# ---------------------------------------------------------------- synthetic images


def cmd_synth(path, size, frac, seed):
    """Data in 1 MiB pieces (alternately random and log text) at spread, 4 KiB-aligned offsets; holes between."""
    size, frac = int(size), float(frac)
    pieces = max(1, round(size * frac / MiB))
    stride = size // pieces
    rnd = Stream(seed)
    text, _ = log_lines(0, MiB)
    text = text.encode()[:MiB]
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(pieces):
            jitter = int.from_bytes(hashlib.sha256(f"{seed}/{i}".encode()).digest()[:4], "big")
            room = max(0, stride - MiB) // PAGE
            off = min(i * stride + (jitter % (room + 1)) * PAGE, size - MiB)
            f.seek(max(0, off))
            f.write(rnd.read(MiB) if i % 2 == 0 else text)
    rnd.close()


def cmd_rand(path, size, seed):
    size = int(size)
    rnd = Stream(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(rnd.read(n))
            left -= n
    rnd.close()


def cmd_zerofrac(path, bs=131072):
    bs = int(bs)
    size = os.path.getsize(path)
    total = (size + bs - 1) // bs
    zero_block = bytes(bs)
    nonzero = 0
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            pos = data_at // bs * bs
            f.seek(pos)
            block = f.read(bs)
            if block != zero_block[: len(block)]:
                nonzero += 1
            pos += bs
    zero = total - nonzero
    print(f"{zero / total:.4f} {zero} {total}")


# ---------------------------------------------------------------- records and the report


def parse_value(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def cmd_record(path, *pairs):
    rec = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        if v != "":
            rec[k] = v if k in ("error", "group", "tool") else parse_value(v)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def cmd_machine(path, *pairs):
    """Writes the run's facts: SECTION:KEY=VALUE pairs (KEY empty: appended to a list) plus this machine."""
    with open("/proc/meminfo") as f:
        mem = int(f.read().split()[1]) / 2**20
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    info = {"machine": {"nproc": os.cpu_count(), "CPU": cpu, "kernel": os.uname().release, "RAM": f"{mem:.1f} GiB"}}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.rpartition(":")
        if not section:
            info[name] = value
        elif name:
            info.setdefault(section, {})[name] = value
        else:
            info.setdefault(section, []).append(value)
    with open(path, "w") as f:
        json.dump(info, f, indent=1)


def cmd_fio_iops(path):
    with open(path) as f:
        text = f.read()
    data = json.loads(text[text.index("{"):])  # fio may print warnings before the JSON
    print(round(data["jobs"][0]["read"]["iops"]))


def cmd_free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def descendants(root):
    children = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(pid)
    out, todo = [], [str(root)]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


def cmd_peak_rss(root, prefix, out):
    """Polls every 50 ms; the remote memory fallback when there is no memory cgroup (VmHWM only grows,
    so polling misses at most the last 50 ms of a process)."""
    peak = 0

    def stop(*_):
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        for pid in descendants(root):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if not f.read().startswith(prefix):
                        continue
                with open(f"/proc/{pid}/status") as f:
                    hwm = next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0)
            except (OSError, ValueError):
                continue
            if hwm > peak:
                peak = hwm
                with open(out + ".tmp", "w") as f:
                    f.write(f"{peak}\n")
                os.replace(out + ".tmp", out)
        time.sleep(0.05)


NUMERIC = ("wall", "user", "sys", "cpu", "sync_s", "remote_cpu", "ssh_cpu", "agent_cpu", "rss_kb", "remote_rss_kb", "store_bytes", "wire_bytes", "wire_up", "wire_down",
           "bytes", "iops", "rate", "alloc_bytes")


def human_bytes(n):
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def summarize(runs):
    """Groups records by (section, group, tool) in first-seen order; medians of successful runs."""
    rows, index = [], {}
    for r in runs:
        key = (r.get("section", "main"), r["group"], r["tool"])
        if key not in index:
            index[key] = len(rows)
            rows.append({"section": key[0], "group": key[1], "tool": key[2], "cache": r.get("cache", ""),
                         "ok": [], "errors": []})
        row = rows[index[key]]
        (row["errors"] if "error" in r else row["ok"]).append(r)
    for row in rows:
        med = {}
        for k in NUMERIC:
            vals = [r[k] for r in row["ok"] if isinstance(r.get(k), (int, float))]
            if vals:
                med[k] = statistics.median(vals)
        row["median"] = med
        row["runs"] = len(row["ok"]) + len(row["errors"])
        row["runs_ok"] = len(row["ok"])
        row["error"] = row["errors"][0]["error"] if row["errors"] else None
        del row["ok"], row["errors"]
    for row in rows:
        ref = next((o for o in rows if o["section"] == row["section"] and o["group"] == row["group"]
                    and o["tool"] == "ours" and o["runs_ok"]), None)
        row["vs_ours"] = None
        if ref is None or row is ref or not row["runs_ok"]:
            continue
        a, b = row["median"], ref["median"]
        if "iops" in a and "iops" in b and a["iops"]:
            row["vs_ours"] = b["iops"] / a["iops"]  # time per I/O, tool / ours
        elif a.get("wall") and b.get("wall"):
            row["vs_ours"] = a["wall"] / b["wall"]
    return rows


def cells(row):
    m = row["median"]
    if row["runs_ok"] == 0:
        err = (row["error"] or "failed").replace("|", "/")
        return [row["group"], row["tool"], row["cache"], "n/a", "", "", "", "", f"n/a: {err[:150]}", ""]
    cpu = ""
    if "cpu" in m:
        cpu = f"{m['cpu']:.2f}"
        if "remote_cpu" in m:
            cpu += f" (+{m['remote_cpu']:.2f} remote)"
    rss = ""
    if "rss_kb" in m:
        rss = f"{m['rss_kb'] / 1024:,.0f}"
        if "remote_rss_kb" in m:
            rss += f" (+{m['remote_rss_kb'] / 1024:,.0f} remote)"
    notes = []
    if "rate" in m:
        notes.append(f"{m['rate'] / 1e6:,.0f} MB/s")
    elif m.get("bytes") and m.get("wall"):
        notes.append(f"{m['bytes'] / m['wall'] / 1e6:,.0f} MB/s")
    if "iops" in m:
        notes.append(f"{m['iops']:,.0f} IOPS")
    if "ssh_cpu" in m and "agent_cpu" in m and "remote_cpu" in m:
        notes.append(f"CPU split: storage side {m['cpu'] - m['ssh_cpu']:.2f}, ssh client {m['ssh_cpu']:.2f}, "
                     f"sshd {m['remote_cpu'] - m['agent_cpu']:.2f}, agent {m['agent_cpu']:.2f}")
    if "alloc_bytes" in m:
        notes.append(f"output allocates {human_bytes(m['alloc_bytes'])}")
    if row["runs_ok"] < row["runs"]:
        notes.append(f"{row['runs'] - row['runs_ok']} of {row['runs']} runs failed: {row['error'][:80]}")
    return [
        row["group"], row["tool"], row["cache"],
        f"{m['wall']:.2f}" if "wall" in m else "",
        cpu,
        rss,
        human_bytes(m.get("store_bytes")),
        human_bytes(m.get("wire_bytes")),
        "; ".join(notes).replace("|", "/"),
        f"{row['vs_ours']:.2f}×" if row["vs_ours"] is not None else "",
    ]


HEADER = ["operation", "tool", "cache", "wall s", "CPU s", "peak RSS MiB", "store after", "on the wire", "notes",
          "vs ours"]


def table(rows):
    data = [HEADER] + [cells(r) for r in rows]
    widths = [max(len(r[i]) for r in data) for i in range(len(HEADER))]
    numeric = {3, 4, 5, 6, 7, 9}
    lines = []
    for n, r in enumerate(data):
        lines.append("| " + " | ".join(c.rjust(w) if i in numeric else c.ljust(w)
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 1) + (":" if i in numeric else "-")
                                        for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def cmd_report(runs_path, machine_path, *opts):
    args = dict(zip(opts[0::2], opts[1::2]))
    with open(machine_path) as f:
        machine = json.load(f)
    runs = []
    if os.path.exists(runs_path):
        with open(runs_path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    rows = summarize(runs)
    out = [f"# diskdump benchmark, {machine.get('date', '')}", ""]
    for k in ("machine", "settings", "versions", "images"):
        v = machine.get(k)
        if v:
            items = v.items() if isinstance(v, dict) else [(None, x) for x in v]
            out += [f"**{k}:** " + "; ".join(f"{a}: {b}" if a else str(b) for a, b in items), ""]
    out.append("Medians over the runs. CPU s is user+sys of the command and its children; for dumps "
               "\"+remote\" is the CPU of sshd and the agent on the SSH side; for mounts it includes the FUSE "
               "daemon. Peak RSS of a mount is the FUSE daemon's; for dumps \"+remote\" is the peak memory of sshd and "
               "the agent (see settings: remote memory). \"vs ours\" is the tool's wall time over "
               "ours in the same operation (for random reads: time per I/O); above 1 means slower than ours.")
    for section in dict.fromkeys(r["section"] for r in rows):
        out += ["", f"## {section}", "", table([r for r in rows if r["section"] == section])]
    text = "\n".join(out) + "\n"
    print(text)
    if args.get("--markdown"):
        with open(args["--markdown"], "w") as f:
            f.write(text)
    if args.get("--json"):
        with open(args["--json"], "w") as f:
            json.dump({"machine": machine, "rows": rows, "runs": runs}, f, indent=1)
            f.write("\n")


# ---------------------------------------------------------------- history (outside the image recipe)


def cmd_mutate(path, frac, seed):
    """One day of change: rewrites `frac` of the image's bytes in place, in runs of 4 KiB to 256 KiB at
    random 4 KiB-aligned offsets (alternately incompressible bytes and log text), deterministic per seed."""
    size, frac = os.path.getsize(path), float(frac)
    rng = random.Random(f"mutate-{seed}")
    rnd = Stream(f"mutate-{seed}")
    text, _ = log_lines(int(seed) * 100000, 256 * 1024)
    text = text.encode()
    todo, n = int(size * frac), 0
    with open(path, "r+b") as f:
        while todo > 0:
            length = min(rng.randint(1, 64) * PAGE, todo)
            f.seek(rng.randrange(0, (size - length) // PAGE + 1) * PAGE)
            f.write(rnd.read(length) if n % 2 == 0 else (text * (length // len(text) + 1))[:length])
            todo -= length
            n += 1
    rnd.close()


COMMANDS = {
    "fill": cmd_fill, "day2": cmd_day2, "synth": cmd_synth, "rand": cmd_rand, "zerofrac": cmd_zerofrac,
    "record": cmd_record, "machine": cmd_machine, "fio-iops": cmd_fio_iops, "free-port": cmd_free_port, "report": cmd_report,
    "peak-rss": cmd_peak_rss, "mutate": cmd_mutate,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
