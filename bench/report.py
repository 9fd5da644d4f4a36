"""Printing and plotting benchmark results."""
from __future__ import annotations

import os

from bench.driver import BenchResult

PUBLISHED = {"transfers_per_s": 34_700, "vcpus": 8, "initiation_p50_ms": 2, "initiation_p99_ms": 23,
             "completion_p50_ms": 125, "completion_p99_ms": 220}


def table(results: list[BenchResult], cores: int) -> str:
    rows = [("workers", "partitions", "accounts", "mode", "transfers/s", "per core", "init p50",
             "init p99", "compl p50", "compl p99", "sent", "rejected", "unfinished", "broker raw msgs/s")]
    for r in results:
        rows.append((str(r.workers), str(r.partitions), f"{r.accounts:,}", r.mode,
                     f"{r.transfers_per_s:,.0f}", f"{r.transfers_per_s / cores:,.0f}",
                     f"{r.initiation_p50_ms:.1f} ms", f"{r.initiation_p99_ms:.1f} ms",
                     f"{r.completion_p50_ms:.0f} ms", f"{r.completion_p99_ms:.0f} ms",
                     f"{r.sent:,}", f"{r.rejected:,}", f"{r.unfinished:,}",
                     f"{r.broker_raw_msgs_per_s:,.0f}"))
    rows.append(("published", "", "", "2 nodes x 4 vCPU", f"{PUBLISHED['transfers_per_s']:,}",
                 f"{PUBLISHED['transfers_per_s'] / PUBLISHED['vcpus']:,.0f}", "2 ms", "23 ms", "125 ms",
                 "220 ms", "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def plot(results: list[BenchResult], out_dir: str) -> list[str]:
    """latency.png (distributions of the last run) and, for several runs, scaling.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    last = results[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, name in ((axes[0], last.initiation_ms, "initiation"),
                             (axes[1], last.completion_ms, "completion")):
        if values:
            ax.hist(values, bins=100, color="#3b75af")
            for q, style in ((0.5, "--"), (0.99, ":")):
                v = sorted(values)[min(len(values) - 1, int(q * len(values)))]
                ax.axvline(v, color="k", linestyle=style, label=f"p{int(q * 100)} {v:.1f} ms")
            ax.legend()
        ax.set_title(f"{name} latency ({last.workers} workers, {last.mode})")
        ax.set_xlabel("ms")
        ax.set_ylabel("transfers")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "latency.png"))
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
