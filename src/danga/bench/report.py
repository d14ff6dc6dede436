"""A run's document (:func:`danga.bench.harness.summarise`) as tables, goals and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import http
from .harness import median, ratio

#: The server every ratio is about, and the reference of the ratios to asyncio.
DANGA, ASYNCIO = "danga-epoll", "asyncio"
#: Workloads whose server CPU per round trip gets its own table.
CPU_WORKLOADS = ("pp64x10", "pp64x100", "pipe64x10x16")
USER = "server_user_us_per_rt"


def goals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals for danga on epoll, each with its measured value and whether it holds.

    Ratios are medians of the per-round ratios; a goal with nothing measured says so
    (``ok`` None) instead of passing.
    """
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float | None, op: str, bound: float) -> None:
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        rows.append({"goal": what, "value": value, "op": op, "bound": bound, "ok": ok})

    def r(wl: str, peer: str, metric: str = "value") -> float | None:
        got = ratio(doc, wl, DANGA, peer, metric)
        return None if got is None else got["median"]

    for what, got, bound in http.goals(doc.get("http", {})):
        add(what, None if got is None else got["median"], ">=", bound)
    if not doc["workloads"]:  # HTTP workloads only
        return rows
    for wl in ("pp64x10", "pp64x100"):
        add(f"user CPU/rt {wl} vs uvloop", r(wl, "uvloop", USER), "<=", 0.8)
        add(f"user CPU/rt {wl} vs rloop", r(wl, "rloop", USER), "<=", 1.0)
    add("user CPU/rt pp64x10 vs asyncio", r("pp64x10", ASYNCIO, USER), "<=", 0.5)
    add("user CPU/rt pp64x10 vs epoll-raw", r("pp64x10", "epoll-raw", USER), "<=", 1.0)
    for peer in ("uvloop", "rloop", ASYNCIO):
        known = [x for x in (r(wl, peer) for wl in doc["workloads"]) if x is not None]
        add(f"worst throughput ratio to {peer} over all workloads",
            min(known) if known else None, ">=", 1.0)
    sc = doc.get("syscalls", {}).get(DANGA)
    ok_sc = sc is not None and "error" not in sc
    add("syscalls per round trip", sc["per_rt"] if ok_sc else None, "<=", 2.15)
    add("epoll_ctl calls in the steady state", float(sc["epoll_ctl"]) if ok_sc else None,
        "<=", 0)
    idle0, idle10k = median(doc, "pp64x10", DANGA), median(doc, "idle10000", DANGA)
    add("throughput with 10,000 idle / with 0 idle",
        idle10k / idle0 if idle0 and idle10k else None, ">=", 0.95)
    add("bytes per idle connection", median(doc, "idle10000", DANGA, "bytes_per_idle"),
        "<=", 500)
    perl = [x for x in (r(wl, "perl-danga") for wl in doc["workloads"]) if x is not None]
    add("worst throughput ratio to perl Danga::Socket over all workloads",
        min(perl) if perl else None, ">=", 1.0)
    return rows


def _fmt(v: float) -> str:
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    if v >= 10_000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _cell(s: dict[str, float] | None, fmt: Any = _fmt, suffix: str = "") -> str:
    if s is None:
        return "n/a"
    return f"{fmt(s['median'])}{suffix} ({fmt(s['min'])}-{fmt(s['max'])})"


def _ratio_cell(s: dict[str, float] | None) -> str:
    return _cell(s, lambda v: f"{v:.2f}", "x")


def _us(v: float) -> str:
    return f"{v:.2f}"


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(row) + " |" for row in rows]]


def versions_text(doc: dict[str, Any]) -> list[str]:
    """One line per server: what exactly was measured."""
    return [f"- {name}: {doc['versions'].get(name, '?')}" for name in doc["servers"]]


def table(doc: dict[str, Any]) -> str:
    """The terminal (and Markdown) tables."""
    servers = list(doc["servers"])
    wls = doc["workloads"]
    st = doc["settings"]
    note = "" if doc["loadgen"] == "c" else \
        " (PYTHON FALLBACK load generator: figures are floors)"
    warmed = ("every one warmed by a connection that echoes and closes"
              if st.get("warm_up_connection", True) else
              "COLD: no warm-up connection (--cold); not figures to compare")
    out = [f"Servers ({warmed})", "",
           *versions_text(doc), "",
           f"Throughput, median (min-max) of {st['rounds']} interleaved rounds, "
           f"{st['duration']} s each{note}", ""] if servers else []
    out += [] if not servers else _grid(["workload", *servers],
                 [[f"{wl['title']} [{wl['unit']}]",
                   *[_cell(wl["servers"][s]["value"]) if s in wl["servers"] else "n/a"
                     for s in servers]] for wl in wls.values()])
    peers = [s for s in servers if s != DANGA]
    if DANGA in servers and peers:
        out += ["", f"Throughput of {DANGA} / each peer: median (min-max) of the per-round "
                    "ratios", ""]
        out += _grid(["workload", *[f"/ {p}" for p in peers]],
                     [[wl["title"], *[_ratio_cell(ratio(doc, k, DANGA, p)) for p in peers]]
                      for k, wl in wls.items()])
    if ASYNCIO in servers:
        others = [s for s in servers if s != ASYNCIO]
        out += ["", "Throughput of each server / asyncio: median (min-max) of the per-round "
                    "ratios", ""]
        out += _grid(["workload", *others],
                     [[wl["title"], *[_ratio_cell(ratio(doc, k, s, ASYNCIO)) for s in others]]
                      for k, wl in wls.items()])
    for key in CPU_WORKLOADS:
        per = wls.get(key, {}).get("servers", {})
        if not per:
            continue
        out += ["", f"Server CPU per round trip, {wls[key]['title']}: µs, median (min-max); "
                    f"user CPU ratios ({DANGA}'s / this server's, this server's / "
                    f"{ASYNCIO}'s) are medians (min-max) of the per-round ratios; client CPU "
                    "is the load generator's (a fraction of its core)", ""]
        rows = []
        for s in servers:
            v = per.get(s)
            if v is None:
                continue
            rel = _ratio_cell(ratio(doc, key, DANGA, s, USER)) if s != DANGA else "1"
            rel_a = _ratio_cell(ratio(doc, key, s, ASYNCIO, USER)) if s != ASYNCIO else "1"
            rows.append([s, _cell(v[USER], _us), _cell(v["server_sys_us_per_rt"], _us),
                         _us(v["server_cpu_us_per_rt"]["median"]), rel, rel_a,
                         f"{v['client_cpu_frac']['median']:.2f}"])
        out += _grid(["server", "user µs/rt", "sys µs/rt", "user+sys", f"{DANGA} user / this",
                      f"user / {ASYNCIO}", "client CPU"], rows)
    idle = wls.get("idle10000", {}).get("servers", {})
    if idle:
        out += ["", "Memory per idle connection (server RSS delta for 10,000 idle), bytes", ""]
        out += _grid(["server", "bytes/conn (min-max)"],
                     [[s, _cell(idle[s]["bytes_per_idle"], lambda v: f"{v:.0f}")]
                      for s in servers if s in idle])
    if doc["timers"]:
        impls = sorted({i for m in doc["timers"].values() for i in m})
        out += ["", f"Timers, {doc.get('timer_n', 100_000):,} each, timers/s median (min-max)",
                ""]
        rows = []
        for mode, per_impl in doc["timers"].items():
            rel = (f"{per_impl['danga']['median'] / per_impl['asyncio']['median']:.2f}x"
                   if "danga" in per_impl and "asyncio" in per_impl else "n/a")
            rows.append([mode, *[_cell(per_impl.get(i)) for i in impls], rel])
        out += _grid(["mode", *impls, "danga / asyncio"], rows)
    if doc["syscalls"]:
        state = "warmed" if st.get("warm_up_connection", True) else "COLD"
        out += ["", f"System calls per round trip (strace -c on the {state} server, steady "
                    "window, ping-pong 64 B x 10)", ""]
        rows = []
        for s, v in doc["syscalls"].items():
            if "error" in v:
                rows.append([s, "n/a", "n/a", v["error"]])
                continue
            top = ", ".join(f"{k} {c / v['rts']:.2f}" for k, c in
                            sorted(v["calls"].items(), key=lambda kv: -kv[1])[:4])
            rows.append([s, f"{v['per_rt']:.2f}", str(v["epoll_ctl"]), top])
        out += _grid(["server", "syscalls/rt", "epoll_ctl", "top calls per rt"], rows)
    section = doc.get("http")
    if section is not None:
        out += ["", "HTTP workloads (the example programs, danga/bench/http.py)"]
        if "workloads" in section:
            out += [*(f"- {n}: {v}" for n, v in section["versions"].items()),
                    f"- {section['wrk']}", http.tables(section)]
        else:
            out += ["", f"- not run: {section.get('skipped') or section.get('error')}"]
    out += ["", f"Goals ({DANGA}; the HTTP ones: the danga example programs)", ""]
    out += _grid(["goal", "measured", "bound", "holds"],
                 [[g["goal"], "n/a" if g["value"] is None else f"{g['value']:.3g}",
                   f"{g['op']} {g['bound']:g}",
                   "not measured" if g["ok"] is None else ("yes" if g["ok"] else "**no**")]
                  for g in doc.get("goals", [])])
    extra = [f"- skipped {name}: {why}" for name, why in doc["skipped"].items()]
    extra += [f"- not run {name}: {why}" for name, why in doc["not_run"].items()]
    extra += [f"- error: {err}" for err in doc["errors"]]
    extra += [f"- {name} read the end of the warm-up connection but had not closed its "
              "socket a second later" for name in doc.get("warm_not_closed", [])]
    if extra:
        out += ["", *extra]
    return "\n".join(out)


def chart(doc: dict[str, Any], path: Path) -> str | None:
    """A PNG: throughput by server and workload, and the server CPU per round trip split
    into user and system. Returns a note (and draws nothing) when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'danga[bench]'): no chart"
    wls = [w for w in doc["workloads"].values() if w["servers"]]
    if not wls:
        return "nothing measured: no chart"
    servers = doc["servers"]
    cpu = [(k, doc["workloads"][k]) for k in CPU_WORKLOADS[:2]
           if doc["workloads"].get(k, {}).get("servers")]
    cols = 4
    rows = (len(wls) + len(cpu) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.5 * rows + 0.9),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    flat = list(axes.flat)
    for ax, wl in zip(flat, wls, strict=False):
        names = [s for s in servers if s in wl["servers"]]
        med = [wl["servers"][s]["value"]["median"] for s in names]
        lo = [m - wl["servers"][s]["value"]["min"] for s, m in zip(names, med, strict=True)]
        hi = [wl["servers"][s]["value"]["max"] - m for s, m in zip(names, med, strict=True)]
        ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=3,
               color=[colours(servers.index(s) % 10) for s in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_title(wl["title"], fontsize=9)
        ax.set_ylabel(wl["unit"], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax, (_key, wl) in zip(flat[len(wls):], cpu, strict=False):
        names = [s for s in servers if s in wl["servers"]]
        user = [wl["servers"][s][USER]["median"] for s in names]
        syst = [wl["servers"][s]["server_sys_us_per_rt"]["median"] for s in names]
        ax.bar(range(len(names)), user, color="tab:blue", label="user")
        ax.bar(range(len(names)), syst, bottom=user, color="tab:gray", label="system")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"server CPU per round trip\n{wl['title']}", fontsize=9)
        ax.set_ylabel("µs (median)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7)
    for ax in flat[len(wls) + len(cpu):]:
        ax.axis("off")
    st = doc["settings"]
    warmed = "every server warmed" if st.get("warm_up_connection", True) else "COLD servers"
    fig.suptitle(f"danga echo benchmarks: median and min-max of {st['rounds']} interleaved "
                 f"rounds, {warmed}", fontsize=10)
    versions = "; ".join(f"{n}: {doc['versions'].get(n, '?')}" for n in servers)
    fig.text(0.01, 0.005, _wrap(versions, 190), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])
