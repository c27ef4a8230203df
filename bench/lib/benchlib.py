"""Shared helpers for the keel benchmark scripts (bench/echo, bench/engines).

Standard library only (Python 3.11). What is here:

- locating the repository, the cargo target dir and the binaries; building them;
- `Server`: start a server process, wait for its `listening tcp ADDR` line (bounded), read its
  CPU time from /proc, ask keel for its `stats` line (SIGUSR2), stop it by PID with SIGTERM;
- `cpu_seconds(pid)`: utime+stime of a process (all its threads) from /proc/PID/stat;
- `machine_busy_seconds()`: every CPU's busy time from /proc/stat, whoever it was charged to;
- `LoadGen`: run `keel bench pingpong ...` and parse its `pingpong key=value ...` line;
- `median`, plain-text and markdown tables, and `svg_line_plot` (hand-written SVG).

Nothing here uses a shell: every process is started from an argument list and stopped by its PID.
"""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax.saxutils import escape as _xml_escape

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step failed in a way the script should report (not a bug in the script)."""


# --------------------------------------------------------------------------------------------
# Paths, binaries, building


def repo_root() -> Path:
    """The repository root: bench/lib/benchlib.py -> ../.."""
    return Path(__file__).resolve().parents[2]


def out_dir() -> Path:
    d = repo_root() / "bench" / "out"
    d.mkdir(parents=True, exist_ok=True)
    return d


def resolve_target_dir(flag: str | None) -> Path:
    """--target-dir FLAG, else $CARGO_TARGET_DIR, else <repo>/target. Relative paths are taken
    relative to the current directory, as cargo does."""
    raw = flag or os.environ.get("CARGO_TARGET_DIR") or str(repo_root() / "target")
    return Path(raw).expanduser().resolve()


def binary(target_dir: Path, name: str) -> Path:
    return target_dir / "release" / name


def cargo_build(packages: Sequence[str], target_dir: Path, timeout: float = 1800) -> None:
    """`cargo build --release -p A -p B` in the repo root, into target_dir."""
    cmd = ["cargo", "build", "--release"]
    for p in packages:
        cmd += ["-p", p]
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    log(f"building: {' '.join(cmd)}  (CARGO_TARGET_DIR={target_dir})")
    try:
        r = subprocess.run(cmd, cwd=repo_root(), env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"cargo build did not finish in {timeout:.0f} s")
    except FileNotFoundError:
        raise BenchError("cargo not found on PATH (use --no-build with prebuilt binaries)")
    if r.returncode != 0:
        raise BenchError(f"cargo build failed (exit {r.returncode})")


def require_binaries(paths: Iterable[Path]) -> None:
    missing = [str(p) for p in paths if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        raise BenchError(
            "missing binaries: " + ", ".join(missing)
            + " (build them, or point --target-dir / CARGO_TARGET_DIR at the right place)"
        )


def compile_c(src: Path, out: Path) -> Path:
    """gcc -O2 SRC -o OUT (a floor program); a clear error when gcc is missing or fails."""
    import shutil
    gcc = shutil.which("gcc")
    if not gcc:
        raise BenchError("gcc not found on PATH: install it with `apt-get install gcc`")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [gcc, "-O2", "-o", str(out), str(src)]
    log("building: " + " ".join(cmd))
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"gcc failed on {src.name}:\n" + r.stderr.decode(errors="replace"))
    return out


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine_info() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU ({model or platform.machine()}), "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def write_atomic(path: Path, text: str) -> None:
    """Write via PATH.tmp + rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Resource limits


def nofile_limits() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of this process; an infinite hard limit is reported as the
    kernel's fs.nr_open (the most setrlimit accepts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        try:
            hard = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            hard = 1 << 20
    if soft == resource.RLIM_INFINITY:
        soft = hard
    return soft, hard


def raise_nofile_preexec():
    """A preexec_fn for subprocess: in the child, raise the soft RLIMIT_NOFILE to the hard limit.
    The value is computed here, in the parent; the child only calls setrlimit. (The scripts start
    no threads, so preexec_fn is safe to use.)"""
    _, hard = nofile_limits()
    real_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def _fn() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, real_hard))

    return _fn


# --------------------------------------------------------------------------------------------
# /proc readings


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """CPU seconds used so far by process PID, all its threads: utime + stime (fields 14 and 15
    of /proc/PID/stat), plus cutime + cstime (16, 17: waited-for children, 0 for our servers)
    when include_children. Raises BenchError if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError as e:
        raise BenchError(f"cannot read /proc/{pid}/stat: {e}")
    # Field 2 (comm) is in parentheses and may contain spaces: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    ticks = int(rest[14 - 3]) + int(rest[15 - 3])
    if include_children:
        ticks += int(rest[16 - 3]) + int(rest[17 - 3])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far, all CPUs: user, nice, system, irq,
    softirq and steal from /proc/stat's `cpu` line (guest time is inside user and nice).

    Why beside `cpu_seconds`: on loopback, the kernel runs a segment's TCP work in whichever
    context sends it, and an ACK that arrives while wrk reads makes wrk's context send the
    server's next segments. How much of a large response is charged to the server then depends
    on timing, not on the server. The machine's total has no such split: with the same wrk
    work for every server, its differences are the servers' (meaningful only on a machine
    that runs nothing else meanwhile)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise BenchError("/proc/stat: no `cpu` line")
    v = [int(x) for x in fields[1:9]] + [0] * (8 - len(fields[1:9]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def fd_count(pid: int) -> int:
    """Number of open file descriptors of PID (entries of /proc/PID/fd); -1 if unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# --------------------------------------------------------------------------------------------
# Servers

_LISTEN_RE = re.compile(rb"^listening tcp (\S+)\s*$", re.M)


class Server:
    """A server process started from an argument list. stdout and stderr go to files under
    log_dir (no pipes, no reader threads); start() waits for `listening tcp ADDR`."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path):
        self.name = name
        self.argv = list(argv)
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.stdout_path = log_dir / f"{safe}.stdout"
        self.stderr_path = log_dir / f"{safe}.stderr"
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> "Server":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    preexec_fn=raise_nofile_preexec(),
                    close_fds=True,
                )
            except OSError as e:
                raise BenchError(f"{self.name}: cannot start {self.argv[0]}: {e}")
        deadline = time.monotonic() + timeout
        while True:
            m = _LISTEN_RE.search(self.stdout_path.read_bytes())
            if m:
                self.addr = m.group(1).decode()
                return self
            rc = self.proc.poll()
            if rc is not None:
                self.exit_code = rc
                raise BenchError(
                    f"{self.name} exited with {rc} before listening; stderr:\n"
                    + self.stderr_tail()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(
                    f"{self.name}: no 'listening tcp ADDR' line within {timeout:.0f} s; stderr:\n"
                    + self.stderr_tail()
                )
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stderr_size(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except OSError:
            return 0

    def stderr_since(self, offset: int) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode(errors="replace")

    def stats(self, timeout: float = 2.0) -> dict | None:
        """keel only: SIGUSR2 makes the server write one `stats key=value ...` line to stderr.
        Returns the parsed line, or None if none came within the timeout. (Never call this on a
        server that does not handle SIGUSR2: its default action terminates the process.)"""
        if not self.alive():
            return None
        offset = self.stderr_size()
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr_since(offset).splitlines():
                if line.startswith("stats "):
                    return parse_kv(line)
            time.sleep(0.01)
        return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID, wait up to timeout, then SIGKILL. Returns the exit status
        (negative: killed by that signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM for {timeout:.0f} s: SIGKILL")
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Load generator


def parse_kv(line: str) -> dict:
    """`word k=v k=v ...` -> {'_kind': word, k: v}; values that look numeric become numbers."""
    parts = line.split()
    out: dict = {"_kind": parts[0] if parts else ""}
    for p in parts[1:]:
        if "=" not in p:
            continue
        k, v = p.split("=", 1)
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def pingpong_argv(keel: Path, addr: str, conns: int, size: int, duration: float,
                  idle: int = 0, threads: int = 1) -> list[str]:
    argv = [str(keel), "bench", "pingpong", "--addr", addr, "--conns", str(conns),
            "--size", str(size), "--duration", f"{duration:g}"]
    if idle:
        argv += ["--idle", str(idle)]
    if threads > 1:
        argv += ["--threads", str(threads)]
    return argv


class LoadGen:
    """`keel bench pingpong ...` as a child process (stdout/stderr to files, no pipes).
    start(); poll()/wait(); result() parses its `pingpong key=value ...` line."""

    def __init__(self, argv: Sequence[str], log_dir: Path, name: str = "loadgen"):
        self.argv = list(argv)
        self.log_dir = log_dir
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LoadGen":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    preexec_fn=raise_nofile_preexec(), close_fds=True,
                )
            except OSError as e:
                raise BenchError(f"cannot start load generator {self.argv[0]}: {e}")
        return self

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"load generator did not finish within {timeout:.0f} s (killed)")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def result(self) -> dict:
        """The parsed `pingpong ...` line. BenchError if the process failed or printed none."""
        assert self.proc is not None
        out = self.stdout_path.read_text(errors="replace")
        err = self.stderr_path.read_text(errors="replace")
        lines = [l for l in out.splitlines() if l.startswith("pingpong ")]
        if self.proc.returncode != 0 or not lines:
            raise BenchError(
                f"load generator exit {self.proc.returncode}, "
                f"{'no pingpong line' if not lines else 'line: ' + lines[-1]}; "
                f"stderr: {_last_line(err)!r}"
            )
        r = parse_kv(lines[-1])
        for k in ("messages", "msgs_per_sec", "mb_per_sec"):
            if k not in r:
                raise BenchError(f"pingpong line lacks {k}=: {lines[-1]!r}")
        r.setdefault("errors", 0)
        return r


def _last_line(text: str, limit: int = 240) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1][:limit] if lines else ""


def run_pingpong(keel: Path, addr: str, conns: int, size: int, duration: float, idle: int,
                 log_dir: Path, timeout: float) -> dict:
    """Run the load generator to the end (bounded) and return its parsed line."""
    lg = LoadGen(pingpong_argv(keel, addr, conns, size, duration, idle), log_dir).start()
    lg.wait(timeout)
    return lg.result()


# --------------------------------------------------------------------------------------------
# Numbers and tables


def median(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def fmt_num(x: float | None, digits: int = 0) -> str:
    """Thousands separators; '-' for None."""
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def fmt_sig(x: float | None, sig: int = 3) -> str:
    """About `sig` significant digits, no exponent: 0.0123, 1.23, 12.3, 123."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    digits = max(0, sig - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{digits}f}"


def _is_numeric_cell(s: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(x|×|%)?", s.strip()))


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table; numeric-looking cells right-aligned."""
    cols = len(headers)
    widths = [len(h) for h in headers]
    for r in rows:
        for i in range(cols):
            widths[i] = max(widths[i], len(str(r[i])))

    def line(cells, header=False):
        out = []
        for i in range(cols):
            c = str(cells[i])
            right = not header and _is_numeric_cell(c)
            out.append(c.rjust(widths[i]) if right else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers, True), sep] + [line(r) for r in rows])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   right: Sequence[bool] | None = None) -> str:
    """GitHub markdown table. right[i] right-aligns column i (default: all but the first)."""
    if right is None:
        right = [i > 0 for i in range(len(headers))]

    def cell(s) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(c) for c in r) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# SVG


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^n steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v < hi + step * 0.5:
        ticks.append(round(v, 10))
        if v >= hi:
            break
        v += step
    return ticks


def _tick_label(v: float) -> str:
    if abs(v) >= 1000 and float(v).is_integer():
        return f"{int(v):,}"
    if float(v).is_integer():
        return str(int(v))
    return f"{round(v, 6):g}"


_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
_DASHES = ["", "6,3", "2,3", "8,3,2,3", "4,4", "1,2", "10,4"]
_MARKERS = ["circle", "square", "triangle", "diamond", "circle", "square", "triangle"]


def _marker(kind: str, x: float, y: float, color: str, tip: str) -> str:
    t = f"<title>{_xml_escape(tip)}</title>"
    if kind == "square":
        return (f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" '
                f'fill="{color}">{t}</rect>')
    if kind == "triangle":
        pts = f"{x:.1f},{y - 4.5:.1f} {x - 4.5:.1f},{y + 3.5:.1f} {x + 4.5:.1f},{y + 3.5:.1f}"
        return f'<polygon points="{pts}" fill="{color}">{t}</polygon>'
    if kind == "diamond":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{color}">{t}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">{t}</circle>'


def svg_line_plot(series: Sequence[tuple[str, Sequence[tuple[float, float | None]]]], *,
                  title: str, xlabel: str, ylabel: str, subtitle: str = "",
                  xticks: Sequence[float] | None = None, y_from_zero: bool = True,
                  width: int = 760, height: int = 460, value_fmt=fmt_sig,
                  footnotes: Sequence[str] = (), y_log: bool = False) -> str:
    """A line plot as a standalone SVG document.

    series: [(name, [(x, y), ...]), ...]; a y of None is a gap (the line breaks there).
    xticks: tick positions on the x axis (default: round values over the data range).
    footnotes: short lines printed under the legend (wrapped).
    y_log: logarithmic y axis (ticks at 1, 2, 5 x 10^n); non-positive y values are dropped."""
    longest = max([len(n) for n, _ in series] + [8])
    mr = max(150, min(320, 70 + 7 * longest))
    ml, mt, mb = 78, 58 if subtitle else 44, 58
    pw, ph = width - ml - mr, height - mt - mb

    xs = [x for _, pts in series for x, y in pts]
    ys = [y for _, pts in series for x, y in pts if y is not None]
    if not xs:
        xs = [0.0, 1.0]
    if not ys:
        ys = [0.0, 1.0]
    x_lo, x_hi = min(xs), max(xs)
    if xticks:
        x_lo, x_hi = min(x_lo, min(xticks)), max(x_hi, max(xticks))
    if x_hi == x_lo:
        x_hi = x_lo + 1
    if y_log:
        ys = [y for y in ys if y > 0] or [1.0, 10.0]
        series = [(n, [(x, y if y is not None and y > 0 else None) for x, y in pts])
                  for n, pts in series]
        d_lo = math.floor(math.log10(min(ys)))
        d_hi = max(d_lo + 1, math.ceil(math.log10(max(ys))))
        mults = (1, 2, 5) if d_hi - d_lo <= 4 else (1,)
        yt = [m * 10.0 ** d for d in range(d_lo, d_hi + 1) for m in mults
              if 10.0 ** d_lo <= m * 10.0 ** d <= 10.0 ** d_hi]
        y_lo, y_hi = 10.0 ** d_lo, 10.0 ** d_hi
    else:
        yt = nice_ticks(0.0 if y_from_zero else min(ys), max(ys))
        y_lo, y_hi = yt[0], yt[-1]
    xt = list(xticks) if xticks else nice_ticks(x_lo, x_hi)
    if not xticks:
        x_lo, x_hi = xt[0], xt[-1]

    def px(x: float) -> float:
        return ml + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        if y_log:
            return mt + ph - (math.log10(y) - math.log10(y_lo)) / \
                (math.log10(y_hi) - math.log10(y_lo)) * ph
        return mt + ph - (y - y_lo) / (y_hi - y_lo) * ph

    e = _xml_escape
    o: list[str] = []
    o.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">')
    o.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>')
    o.append(f'<text x="{ml + pw / 2:.1f}" y="22" text-anchor="middle" font-size="15" '
             f'font-weight="bold">{e(title)}</text>')
    if subtitle:
        o.append(f'<text x="{ml + pw / 2:.1f}" y="40" text-anchor="middle" font-size="11" '
                 f'fill="#555">{e(subtitle)}</text>')
    # grid + ticks
    for v in yt:
        y = py(v)
        o.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        o.append(f'<line x1="{ml - 5}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" stroke="black"/>')
        o.append(f'<text x="{ml - 8}" y="{y + 4:.1f}" text-anchor="end">{e(_tick_label(v))}</text>')
    for v in xt:
        x = px(v)
        o.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#f0f0f0"/>')
        o.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 5}" stroke="black"/>')
        o.append(f'<text x="{x:.1f}" y="{mt + ph + 19}" text-anchor="middle">{e(_tick_label(v))}</text>')
    # axes
    o.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="black"/>')
    o.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>')
    o.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 14}" text-anchor="middle" '
             f'font-size="13">{e(xlabel)}</text>')
    o.append(f'<text transform="translate(20,{mt + ph / 2:.1f}) rotate(-90)" '
             f'text-anchor="middle" font-size="13">{e(ylabel)}</text>')
    # series
    for i, (name, pts) in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        dash = _DASHES[i % len(_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in sorted(pts, key=lambda p: p[0]):
            if y is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((px(x), py(y)))
        for run in runs:
            if len(run) >= 2:
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                o.append(f'<polyline points="{d}" fill="none" stroke="{color}" '
                         f'stroke-width="2"{dash_attr}/>')
        for x, y in pts:
            if y is not None:
                o.append(_marker(_MARKERS[i % len(_MARKERS)], px(x), py(y), color,
                                 f"{name}: x={_tick_label(x)}, y={value_fmt(y)}"))
    # legend (right of the plot area)
    lx, ly = ml + pw + 18, mt + 8
    o.append(f'<rect x="{lx - 8}" y="{ly - 14}" width="{mr - 22}" '
             f'height="{22 * len(series) + 10}" fill="white" stroke="#bbb"/>')
    for i, (name, _) in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        dash = _DASHES[i % len(_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        y = ly + 22 * i
        o.append(f'<line x1="{lx}" y1="{y:.1f}" x2="{lx + 30}" y2="{y:.1f}" stroke="{color}" '
                 f'stroke-width="2"{dash_attr}/>')
        o.append(_marker(_MARKERS[i % len(_MARKERS)], lx + 15, y, color, name))
        o.append(f'<text x="{lx + 38}" y="{y + 4:.1f}">{e(name)}</text>')
    fy = ly + 22 * len(series) + 16
    wrap = max(12, (mr - 24) // 6)
    for note in footnotes:
        words, line = note.split(), ""
        for w in words + [None]:
            if w is not None and len(line) + 1 + len(w) <= wrap:
                line = f"{line} {w}".strip()
                continue
            if line:
                o.append(f'<text x="{lx - 6}" y="{fy:.1f}" font-size="10" fill="#444">'
                         f'{e(line)}</text>')
                fy += 13
            line = w or ""
        fy += 4
    o.append("</svg>")
    return "\n".join(o) + "\n"


# --------------------------------------------------------------------------------------------
# Process trees (servers that fork: prefork, process-per-conn)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (index 0 is field 3, state); None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """PIDs of every descendant of PID (children, their children, ...), from one scan of
    /proc/*/stat (field 4, ppid). Zombies included."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is None or len(f) < 2:
            continue
        children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return sorted(out)


def tree_cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU seconds used so far by PID and its live descendants, and how many descendants were
    read. For each process: utime + stime (fields 14, 15: all its threads) + cutime + cstime
    (16, 17: its children that it has already waited for). A descendant that exits and is
    reaped moves from the live sum into its parent's cutime/cstime, so the total stays
    consistent across samples as long as no descendant dies between the two reads of one
    sample. Raises BenchError if PID itself is gone."""
    total = cpu_seconds(pid, include_children=True)
    n = 0
    for d in descendants(pid):
        f = _stat_fields(d)
        if f is None:
            continue
        total += (int(f[14 - 3]) + int(f[15 - 3]) + int(f[16 - 3]) + int(f[17 - 3])) / CLK_TCK
        n += 1
    return total, n


def thread_count(pid: int) -> int:
    """`Threads:` of /proc/PID/status; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def established_on_port(port: int) -> int:
    """Server-side TCP connections in ESTABLISHED (/proc/net/tcp and tcp6: local port = port),
    whichever process holds them."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 4:
                continue
            try:
                lport = int(f[1].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if lport == port and f[3] == "01":
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# SVG: grouped bars


def svg_grouped_bars(groups: Sequence[tuple[str, Sequence[tuple[str, float | None]]]], *,
                     title: str, ylabel: str, subtitle: str = "",
                     series_order: Sequence[str] = (), width: int = 900, height: int = 480,
                     value_fmt=fmt_sig, footnotes: Sequence[str] = ()) -> str:
    """A grouped bar chart as a standalone SVG document.

    groups: [(group label, [(series name, value), ...]), ...]; a value of None draws no bar
    and prints "n/a" where it would be. Each series keeps one colour across groups (order:
    series_order, then first appearance). Values are printed above the bars."""
    names: list[str] = list(series_order)
    for _, bars in groups:
        for n, _v in bars:
            if n not in names:
                names.append(n)
    color = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}
    longest = max([len(n) for n in names] + [8])
    mr = max(150, min(300, 70 + 7 * longest))
    ml, mt, mb = 78, 58 if subtitle else 44, 70
    pw, ph = width - ml - mr, height - mt - mb
    vals = [v for _, bars in groups for _, v in bars if v is not None]
    top = max(vals) if vals else 1.0
    yt = nice_ticks(0.0, top * 1.08)  # headroom for the value printed above the tallest bar
    step = yt[1] - yt[0] if len(yt) > 1 else 1.0
    while yt[-1] < top * 1.08:
        yt.append(round(yt[-1] + step, 10))
    y_hi = yt[-1]

    def py(v: float) -> float:
        return mt + ph - v / y_hi * ph

    e = _xml_escape
    o: list[str] = []
    o.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">')
    o.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>')
    o.append(f'<text x="{ml + pw / 2:.1f}" y="22" text-anchor="middle" font-size="15" '
             f'font-weight="bold">{e(title)}</text>')
    if subtitle:
        o.append(f'<text x="{ml + pw / 2:.1f}" y="40" text-anchor="middle" font-size="11" '
                 f'fill="#555">{e(subtitle)}</text>')
    for v in yt:
        y = py(v)
        o.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        o.append(f'<line x1="{ml - 5}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" stroke="black"/>')
        o.append(f'<text x="{ml - 8}" y="{y + 4:.1f}" text-anchor="end">{e(_tick_label(v))}</text>')
    gw = pw / max(1, len(groups))
    most = max([len(bars) for _, bars in groups] + [1])
    bw = gw * 0.8 / most  # the same bar width in every group; fewer bars are centred
    for gi, (glabel, bars) in enumerate(groups):
        gx = ml + gi * gw
        x0 = gx + (gw - bw * len(bars)) / 2
        for bi, (name, v) in enumerate(bars):
            x = x0 + bi * bw
            if v is None:
                o.append(f'<text x="{x + bw / 2:.1f}" y="{mt + ph - 4}" text-anchor="middle" '
                         f'font-size="10" fill="#888">n/a</text>')
                continue
            y = py(v)
            o.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, bw - 2):.1f}" '
                     f'height="{mt + ph - y:.1f}" fill="{color[name]}">'
                     f'<title>{e(f"{glabel}, {name}: {value_fmt(v)}")}</title></rect>')
            o.append(f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle" '
                     f'font-size="10">{e(value_fmt(v))}</text>')
        o.append(f'<text x="{gx + gw / 2:.1f}" y="{mt + ph + 18}" text-anchor="middle">'
                 f'{e(glabel)}</text>')
    o.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="black"/>')
    o.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>')
    o.append(f'<text transform="translate(20,{mt + ph / 2:.1f}) rotate(-90)" '
             f'text-anchor="middle" font-size="13">{e(ylabel)}</text>')
    lx, ly = ml + pw + 18, mt + 8
    o.append(f'<rect x="{lx - 8}" y="{ly - 14}" width="{mr - 22}" '
             f'height="{22 * len(names) + 10}" fill="white" stroke="#bbb"/>')
    for i, n in enumerate(names):
        y = ly + 22 * i
        o.append(f'<rect x="{lx}" y="{y - 6:.1f}" width="24" height="12" fill="{color[n]}"/>')
        o.append(f'<text x="{lx + 32}" y="{y + 4:.1f}">{e(n)}</text>')
    fy = max(ly + 22 * len(names) + 16, mt)
    wrap = max(12, (mr - 24) // 6)
    for note in footnotes:
        words, line = note.split(), ""
        for w in words + [None]:
            if w is not None and len(line) + 1 + len(w) <= wrap:
                line = f"{line} {w}".strip()
                continue
            if line:
                o.append(f'<text x="{lx - 6}" y="{fy:.1f}" font-size="10" fill="#444">'
                         f'{e(line)}</text>')
                fy += 13
            line = w or ""
        fy += 4
    o.append("</svg>")
    return "\n".join(o) + "\n"
