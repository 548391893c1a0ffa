"""The report of a correlative labelling run: ``report.json`` and a short Markdown page.

:func:`report_markdown` renders a :func:`volmla.correlate.run_correlation` report (one
table row per plane: where it was found, tilt, rotation, shift, quality, ARI, minerals
not found, labelled fraction; then each plane's clusters and warnings);
:func:`write_report` writes both files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from volmla.io.atomic import replaced_file
from volmla.io.lock import output_lock

__all__ = ["report_markdown", "write_report"]


def report_markdown(report: Mapping[str, Any]) -> str:
    """A short Markdown rendering of a :func:`volmla.correlate.run_correlation` report.

    Parameters
    ----------
    report
        The report (CT, minerals, erode, and one record per plane).

    Returns
    -------
    str
        Markdown: a summary table, then one cluster table per plane with its warnings.

    Examples
    --------
    >>> text = report_markdown(report)  # doctest: +SKIP
    """
    lines = ["# Correlative labelling", "", f"CT: `{report['ct']}`  ", f"Minerals: {', '.join(report['minerals'])}  ",
             f"Label margin (erode): {report['erode']} voxels", "",
             "| plane | found | tilt (deg) | angle (deg) | shift (um) | quality | metric | converged | ARI | "
             "not found | labelled |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["planes"]:
        lines.append(
            f"| {r['name']} | {r['axis']}={r['plane']} | {r['tilt_deg'][0]:.2f}, {r['tilt_deg'][1]:.2f} | "
            f"{r['angle_deg']:.2f} | {r['translation_um'][0]:.1f}, {r['translation_um'][1]:.1f} | {r['quality']:.3f} | "
            f"{r['metric']:.4f} | {'yes' if r['converged'] else 'NO'} | {r.get('ari', '-')} | "
            f"{', '.join(r['minerals_not_found']) or '-'} | {r['labelled_fraction']:.1%} |")
    for r in report["planes"]:
        lines += ["", f"## {r['name']}", "", "| cluster | mineral | confidence | abundance |", "|---|---|---|---|"]
        lines += [f"| {c} | {m} | {r['confidence'][c]:.2f} | {r['abundance'][c]:.3f} |" for c, m in r["assignment"].items()]
        lines += [f"- warning: {w}" for w in r["warnings"]]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` (:func:`report_markdown`) into ``out_dir``.

    Parameters
    ----------
    report
        A :func:`volmla.correlate.run_correlation` report.
    out_dir
        The run's output folder.

    Returns
    -------
    dict
        ``{"json", "markdown"}`` -> path written.

    Examples
    --------
    >>> paths = write_report(report, "correlate_out")  # doctest: +SKIP
    """
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    # report.json marks the run complete: written last, each file swapped in whole
    with output_lock(paths["json"]):
        with replaced_file(paths["markdown"]) as tmp:
            tmp.write_text(report_markdown(report))
        with replaced_file(paths["json"]) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return paths
