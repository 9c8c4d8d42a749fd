"""The end-to-end benchmark report as Markdown."""

from __future__ import annotations

from typing import Any

from maskrt.machine import machine_line


def format_report(report: dict[str, Any]) -> str:
    """The end-to-end report as Markdown: ratios first, then per-stage medians and p90s."""
    lines = [
        f"### {report['model']}, {report['images']} images of {report['image_size'][0]} px, "
        f"{report['heads']} heads",
        "",
        machine_line(report["machine"]),
    ]
    for bs, entry in report["batches"].items():
        lines.append(f"\nBatch {bs}, speed-up over torchvision eager:\n")
        for name, sp in entry["speedup"].items():
            lines.append(
                f"- {name}: **{sp['total']:.2f}x** end to end (pre {sp['pre']:.2f}x, infer "
                f"{sp['infer']:.2f}x, post {sp['post']:.2f}x); identical detections "
                f"{entry['identical_detections'][name]}"
            )
        lines += [
            "",
            "| side | pre ms | infer ms | post ms | total ms (median / p90) | images/s |",
            "|---|---|---|---|---|---|",
        ]
        for side, s in entry["sides"].items():
            lines.append(
                f"| {side} | {s['pre']['median']:.1f} | {s['infer']['median']:.1f} | "
                f"{s['post']['median']:.1f} | {s['total']['median']:.1f} / {s['total']['p90']:.1f} "
                f"| {s['images_per_s']:.2f} |"
            )
    if "peak_rss_mib" in report:
        rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in report["peak_rss_mib"].items())
        lines.append(f"\nPeak RSS (fresh process each): {rss}")
    return "\n".join(lines)
