"""End-to-end ``distillmark detect --key K FILE`` on a large text file, against its floor.

    python benchmarks/bench_detect_cli.py [--quick] [--mb 50] [--no-json]
    python benchmarks/bench_detect_cli.py --startup [--baseline DIR] [--runs 10]

The file is about 50 MB of human text (numpy's and scipy's docstrings, paragraphs shuffled
again and again). The command runs as a subprocess, as a user would run it, with the machine's
default threads (the tokenizer uses every core). Side by side:

* the whole command (process start, imports, key and tokenizer loading, reading, tokenising,
  testing), and its fixed start-up cost (the same command on a 1 kB file);
* in-process: ``Detector.detect(text)``; the tokenizer alone (``encode_batch_fast`` on the same
  text in line-aligned 64 KiB pieces: the floor of any detector that must tokenise); the test
  alone (``detect_ids`` on the ids); reading and decoding the file.

Each stage is timed in wall seconds and in CPU seconds (all threads; for the command, those of
the child process). On a machine shared with other jobs the wall time of a two-thread stage
depends on how many cores were free at that moment; CPU time does not, so the comparison with
the tokenizer floor is made in CPU time.

``--startup``: the command on a 1 kB file only (what a user waits for on a short text), run
``--runs`` times (default 10), median wall and CPU seconds; with ``--baseline DIR`` (a checkout
of another commit, e.g. ``git worktree add DIR main``) the same command from that checkout's
code, the two taking turns, and the ratio. Beside them, what no change to the command's own
code can remove: the interpreter starting, and loading the key's tokenizer (read, parse and
fingerprint its tokenizer.json).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BENCH_SECRET,
    fmt_rate,
    human_text_of_size,
    machine,
    machine_line,
    markdown_table,
    write_json,
)

from distillmark.verify import Detector, detect_ids
from distillmark.verify.detect import text_chunks as _pieces  # the detector's own pieces
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, save_spec


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "distillmark"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("distillmark")
    return [found] if found else [sys.executable, "-m", "distillmark"]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_cli(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (all threads) and stdout of one run of the command."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    dt, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return dt, cpu, proc.stdout


def _site_for(checkout: Path, into: Path) -> Path:
    """A folder for ``PYTHONPATH`` whose ``distillmark`` package is ``checkout``'s code, laid
    out as it installs (``cli/_top`` at the top, ``watermark``, ``verify`` and ``cli``
    beneath), so that the console script runs that checkout."""
    pkg = into / "distillmark"
    pkg.mkdir(parents=True)
    for f in (checkout / "cli" / "_top").iterdir():
        if f.suffix == ".py" or f.name == "py.typed":
            (pkg / f.name).symlink_to(f.resolve())
    for sub in ("watermark", "verify", "cli"):
        (pkg / sub).symlink_to((checkout / sub).resolve())
    return into


def _env_for(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site)}


def _child_cpu(code: str, env: dict[str, str]) -> float:
    """CPU seconds a fresh interpreter reports for ``code``, which prints them."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


_TOKENIZER_LOAD = ("import time\n"
                   "from distillmark.watermark.tokenizer import BUILTIN_SMOLLM2, load_tokenizer\n"
                   "c = time.process_time(); load_tokenizer(BUILTIN_SMOLLM2)\n"
                   "print(time.process_time() - c)")


def startup_only(args: argparse.Namespace) -> int:
    """The command on a 1 kB file, this checkout against ``--baseline``: median wall and CPU
    seconds of ``--runs`` runs each, taking turns."""
    here = Path(__file__).resolve().parents[1]
    trees = {"this checkout": here}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec("greenlist", {}, info, secret=BENCH_SECRET)
    cli = _cli()
    with tempfile.TemporaryDirectory(prefix="distillmark-bench-") as tmp:
        key = save_spec(spec, Path(tmp) / "key.json")
        small = Path(tmp) / "small.txt"
        small.write_text(human_text_of_size(1200, seed=3)[:1000].rsplit(" ", 1)[0] + "\n",
                         encoding="utf-8")
        envs = {name: _env_for(_site_for(tree, Path(tmp) / f"site{i}"))
                for i, (name, tree) in enumerate(trees.items())}
        cmd = cli + ["detect", "--key", str(key), str(small)]
        outs = {name: _run_cli(cmd, env)[2] for name, env in envs.items()}  # warm the caches
        if len(set(outs.values())) != 1:
            raise RuntimeError(f"the checkouts disagree: {outs}")
        wall: dict[str, list[float]] = {name: [] for name in trees}
        cpu: dict[str, list[float]] = {name: [] for name in trees}
        floor_py, floor_tok = [], []
        for rnd in range(args.runs):
            print(f"round {rnd + 1}/{args.runs}", file=sys.stderr)
            for name, env in envs.items():
                dt, c, _ = _run_cli(cmd, env)
                wall[name].append(dt)
                cpu[name].append(c)
            if rnd < 3:
                env = envs["this checkout"]
                floor_py.append(_child_cpu("import time; print(time.process_time())", env))
                floor_tok.append(_child_cpu(_TOKENIZER_LOAD, env))
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    rows = [[f"`distillmark detect --key K small.txt`, {name}", f"{med_w[name]:.3f}",
             f"{min(wall[name]):.3f}", f"{med_c[name]:.3f}",
             f"{med_c[name] / med_c['this checkout']:.2f}×"] for name in trees]
    rows.append(["  interpreter start-up alone (`python -c pass`, CPU)", "-", "-",
                 f"{statistics.median(floor_py):.3f}", "-"])
    rows.append(["  loading the key's tokenizer (read, parse, fingerprint; CPU, in process)",
                 "-", "-", f"{statistics.median(floor_tok):.3f}", "-"])
    info_m = machine()
    table = markdown_table(["run", f"wall s (median of {args.runs})", "wall s (best)",
                            "CPU s (median)", "CPU × this checkout"], rows)
    print(f"\n`distillmark detect` on a 1 kB file; {machine_line(info_m)}\n")
    print(table)
    if "baseline" in trees:
        print(f"\nbaseline / this checkout: wall {med_w['baseline'] / med_w['this checkout']:.2f}×,"
              f" CPU {med_c['baseline'] / med_c['this checkout']:.2f}×")
    if not args.no_json:
        path = write_json("bench_detect_cli_startup", {
            "runs": args.runs, "machine": info_m, "trees": {k: str(v) for k, v in trees.items()},
            "wall_s": wall, "cpu_s": cpu, "median_wall_s": med_w, "median_cpu_s": med_c,
            "interpreter_cpu_s": floor_py, "tokenizer_load_cpu_s": floor_tok, "table": table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


def _timed(fn: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process (all threads) and result of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 5 MB file, fewer repeats")
    ap.add_argument("--mb", type=float, default=None, help="size of the text file in MB "
                    "(default 50, 5 with --quick)")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/out/")
    ap.add_argument("--startup", action="store_true",
                    help="only the command on a 1 kB file, --runs times")
    ap.add_argument("--baseline", default=None,
                    help="with --startup: a checkout of another commit to run side by side")
    ap.add_argument("--runs", type=int, default=10, help="runs of --startup (default 10)")
    args = ap.parse_args(argv)
    if args.startup:
        return startup_only(args)
    mb = args.mb if args.mb is not None else (5.0 if args.quick else 50.0)
    repeat = 2 if args.quick else 3

    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec("greenlist", {}, info, secret=BENCH_SECRET)
    with tempfile.TemporaryDirectory(prefix="distillmark-bench-") as tmp:
        key = save_spec(spec, Path(tmp) / "key.json")
        text = human_text_of_size(int(mb * 1e6), seed=3)
        big = Path(tmp) / "big.txt"
        big.write_text(text, encoding="utf-8")
        small = Path(tmp) / "small.txt"
        small.write_text(text[:1000].rsplit(" ", 1)[0] + "\n", encoding="utf-8")
        size = big.stat().st_size
        print(f"text file: {size / 1e6:.1f} MB", file=sys.stderr)
        cli = _cli()

        # The stages take turns, one run each per round, so that a change in the machine's
        # load during the benchmark affects them alike; medians over the rounds.
        detector = Detector(spec)
        detector.detect(text[:10_000])
        pieces = _pieces(text)
        _run_cli(cli + ["detect", "--key", str(key), str(small)])  # warm the page cache
        stages: dict[str, list[float]] = {k: [] for k in ("cli", "startup", "lib", "tok",
                                                          "test", "read")}
        cpu: dict[str, list[float]] = {k: [] for k in stages}
        stdout, res, ids = "", None, np.zeros(0, dtype=np.int64)

        def record(name: str, wall: float, cpu_s: float) -> None:
            stages[name].append(wall)
            cpu[name].append(cpu_s)

        for rnd in range(repeat):
            print(f"round {rnd + 1}/{repeat}", file=sys.stderr)
            dt, c, stdout = _run_cli(cli + ["detect", "--key", str(key), str(big)])
            record("cli", dt, c)
            dt, c, _ = _run_cli(cli + ["detect", "--key", str(key), str(small)])
            record("startup", dt, c)
            dt, c, _ = _timed(lambda: big.read_bytes().decode("utf-8"))
            record("read", dt, c)
            dt, c, res = _timed(lambda: detector.detect(text))
            record("lib", dt, c)
            dt, c, enc = _timed(lambda: tok.encode_batch_fast(pieces, add_special_tokens=False))
            record("tok", dt, c)
            ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in enc])
            del enc
            dt, c, _ = _timed(lambda ids=ids: detect_ids(ids, detector.scheme))
            record("test", dt, c)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        m = re.search(r"; (\d+) tokens;", stdout)
        if not m or res is None:
            raise RuntimeError(f"cannot read the token count from: {stdout!r}")
        n_tokens = int(m.group(1))
    med = {k: statistics.median(v) for k, v in stages.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    e2e, startup, lib_s = med["cli"], med["startup"], med["lib"]
    tok_s, test_s, read_s = med["tok"], med["test"], med["read"]
    if res.n_tokens != n_tokens:
        print(f"note: in-process count {res.n_tokens} differs from the CLI's {n_tokens}",
              file=sys.stderr)

    best = {k: min(v) for k, v in stages.items()}
    best["cli-startup"] = best["cli"] - med["startup"]

    def row(label: str, seconds: float, cpu_s: float, rate: bool = True,
            key: str = "") -> list[str]:
        return [label, f"{seconds:.2f}", f"{best[key]:.2f}" if key else "-", f"{cpu_s:.2f}",
                fmt_rate(n_tokens / seconds) if rate else "-",
                fmt_rate(n_tokens / cpu_s) if rate else "-",
                f"{cpu_s / med_cpu['tok']:.2f}×"]

    rows = [
        row("`distillmark detect --key K FILE` (subprocess, end to end)", e2e, med_cpu["cli"],
            key="cli"),
        row("  its fixed start-up (same command on a 1 kB file)", startup, med_cpu["startup"],
            rate=False, key="startup"),
        row("  end to end minus start-up", e2e - startup, med_cpu["cli"] - med_cpu["startup"],
            key="cli-startup"),
        row("in process: `Detector(spec).detect(text)`", lib_s, med_cpu["lib"], key="lib"),
        row("tokenizer alone: `encode_batch_fast`, 64 KiB pieces (floor)", tok_s,
            med_cpu["tok"], key="tok"),
        row("test alone: `detect_ids(ids)`", test_s, med_cpu["test"], key="test"),
        row("reading + decoding the file", read_s, med_cpu["read"], rate=False, key="read"),
    ]
    info_m = machine()
    table = markdown_table(["stage", "wall s (median)", "wall s (best round)",
                            "CPU s (all threads, median)", "tokens/s (median wall)",
                            "tokens per CPU-s", "× tokenizer floor (CPU)"], rows)
    print(f"\n`distillmark detect` on {size / 1e6:.1f} MB of text ({n_tokens:,} tokens); "
          f"{machine_line(info_m)}\n")
    print(table)
    print(f"\nverdict on the human text: p = {res.pvalue:.3g} ({res.statistic:,}/{res.n_scored:,} "
          f"distinct tuples green); peak RSS of the command: {peak_rss_mb:,.0f} MB")
    if not args.no_json:
        path = write_json("bench_detect_cli", {
            "quick": args.quick, "file_bytes": size, "n_tokens": n_tokens, "repeat": repeat,
            "machine": info_m, "seconds_per_round": stages, "median_s": med,
            "cpu_seconds_per_round": cpu, "median_cpu_s": med_cpu,
            "peak_rss_mb": peak_rss_mb, "pvalue": res.pvalue,
            "n_scored": res.n_scored, "table": table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
