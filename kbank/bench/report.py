"""Printing and plotting benchmark results."""
from __future__ import annotations

import os
import statistics

from kbank.bench.driver import BenchResult, per_cpu_second

PUBLISHED = {"transfers_per_s": 34_700, "vcpus": 8, "initiation_p50_ms": 2, "initiation_p99_ms": 23,
             "completion_p50_ms": 125, "completion_p99_ms": 220}


def table(results: list[BenchResult], cores: int) -> str:
    rows = [("auth", "workers", "views", "partitions", "accounts", "mode", "transfers/s", "per core",
             "per CPU-s", "per CPU-s w/o load gen", "init p50",
             "init p99", "compl p50", "compl p99", "sent", "rejected", "unfinished", "broker raw msgs/s",
             "records written per transfer", "CPU us per transfer")]
    for r in results:
        with_gen, without_gen = per_cpu_second(r.cpu_us_per_transfer)
        rows.append((r.auth, str(r.workers), str(r.views), str(r.partitions), f"{r.accounts:,}", r.mode,
                     f"{r.transfers_per_s:,.0f}", f"{r.transfers_per_s / cores:,.0f}",
                     f"{with_gen:,.0f}", f"{without_gen:,.0f}",
                     f"{r.initiation_p50_ms:.1f} ms", f"{r.initiation_p99_ms:.1f} ms",
                     f"{r.completion_p50_ms:.0f} ms", f"{r.completion_p99_ms:.0f} ms",
                     f"{r.sent:,}", f"{r.rejected:,}", f"{r.unfinished:,}",
                     f"{r.broker_raw_msgs_per_s:,.0f}",
                     f"{r.records_per_transfer.get('all topics', 0):.1f}",
                     ", ".join(f"{k} {v:.0f}" for k, v in r.cpu_us_per_transfer.items())))
    rows.append(("", "published", "", "", "", "2 nodes x 4 vCPU", f"{PUBLISHED['transfers_per_s']:,}",
                 f"{PUBLISHED['transfers_per_s'] / PUBLISHED['vcpus']:,.0f}", "", "", "2 ms", "23 ms", "125 ms",
                 "220 ms", "", "", "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def plot(results: list[BenchResult], out_dir: str) -> list[str]:
    """latency.png (distributions of the last run), timeline.png (its throughput, the CPU of
    each kind of process, each process's memory and the machine's speed over time) and, for several runs, scaling.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    last = results[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, hist, name in ((axes[0], last.initiation, "initiation"),
                           (axes[1], last.completion, "completion")):
        if hist.count:
            used = [i for i, n in enumerate(hist.counts) if n]
            edges = [hist.upper_ms(i - 1) for i in range(used[0], used[-1] + 2)]
            ax.stairs(hist.counts[used[0]:used[-1] + 1], edges, fill=True, color="#3b75af")
            ax.set_xscale("log")
            for q, style in ((0.5, "--"), (0.99, ":")):
                v = hist.percentile(q)
                ax.axvline(v, color="k", linestyle=style, label=f"p{int(q * 100)} {v:.1f} ms")
            ax.legend()
        ax.set_title(f"{name} latency ({last.workers} workers, {last.mode})")
        ax.set_xlabel("ms (log scale; buckets 1% wide)")
        ax.set_ylabel("transfers")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "latency.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    tl = last.timeline
    if len(tl.t) > 10:
        fig, (top, middle, bottom, machine) = plt.subplots(
            4, 1, figsize=(10, 12), sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 1.5]})
        step = 10   # throughput over 10-second spans
        xs = [tl.t[i] for i in range(step, len(tl.t), step)]
        ys = [(tl.finished[i] - tl.finished[i - step]) / (tl.t[i] - tl.t[i - step])
              for i in range(step, len(tl.t), step)]
        top.plot(xs, ys, color="#3b75af", label="transfers/s (10 s spans)")
        for m, rate in enumerate(last.minute_transfers_per_s):
            top.hlines(rate, 60 * m, 60 * (m + 1), color="k", linewidth=2,
                       label="per minute" if m == 0 else None)
        top.set_ylim(bottom=0)
        top.set_ylabel("transfers/s")
        top.legend(loc="lower right")
        top.grid(alpha=0.3)
        top.set_title(f"throughput and memory over time ({last.workers} workers, {last.mode})")
        kinds = sorted(k for k in tl.cpu_s if k != "broker JIT")   # a part of "broker"
        middle.stackplot(xs, *[tl.cores(kind, step) for kind in kinds], labels=kinds, alpha=0.8)
        middle.set_ylabel("CPU cores used")
        middle.legend(loc="lower right", fontsize="small")
        middle.grid(alpha=0.3)
        for name, mb in sorted(tl.rss_mb.items()):
            bottom.plot(tl.t[:len(mb)], mb, label=name)
        bottom.set_ylim(bottom=0)
        bottom.set_ylabel("resident memory (MB)")
        bottom.legend(loc="lower right", fontsize="small")
        bottom.grid(alpha=0.3)
        if tl.reference_ms:   # the machine's own speed: the same work, its CPU time
            machine.plot(tl.t[:len(tl.reference_ms)], tl.reference_ms, ".", color="0.6", markersize=2)
            for m, ms in enumerate(last.minute_reference_cpu_ms):
                machine.hlines(ms, 60 * m, 60 * (m + 1), color="k", linewidth=2,
                               label="median per minute" if m == 0 else None)
            machine.set_ylim(0, 2.5 * statistics.median(tl.reference_ms))
            if last.minute_reference_cpu_ms:
                machine.legend(loc="lower right", fontsize="small")
        machine.set_ylabel("reference work\n(CPU ms)")
        machine.set_xlabel("seconds since the measured window opened")
        machine.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "timeline.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if len(results) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r.workers for r in results], [r.transfers_per_s for r in results], "o-",
                label="completed transfers/s")
        ax.set_xlabel("engine workers")
        ax.set_ylabel("transfers/s")
        ax.set_xticks([r.workers for r in results])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title("throughput vs workers")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "scaling.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
