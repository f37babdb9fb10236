"""An evaluation's results (``evaluation.json``) as report blocks, rendered generically: every
metric present is shown, with its confidence interval where it has one, and the protocol that
produced it beside it; keys this module does not know get a table of their own, so new
metrics appear without new code. Used by ``evaluation/report.html`` and the run report."""

from __future__ import annotations

import math
from pathlib import Path

from medgen.train.reports.document import Document, Figure, Heading, Table, Text, render_markdown

LABELS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "dice": "mask Dice", "speckled": "speckled",
          "fid": "FID", "kid": "KID", "cmmd": "CMMD", "ms_ssim": "MS-SSIM", "lpips": "LPIPS"}  # fmt: skip
INTERVALS = (("percentile", "percentile"), ("bca", "BCa"), ("ci", "CI"), ("interval", "CI"))
KNOWN = {"samples", "reference", "n_reference", "checkpoint", "step", "sampler",
         "samples_request_hash", "overall", "per_bin", "per_class", "speckle_rule",
         "per_sample", "bin_mean_reference_ssim", "control", "request", "distribution",
         "regional", "seconds", "paired"}  # fmt: skip
MAX_ROWS = 60  # per generic table: long per-sample lists are left to evaluation.json


def fmt(value) -> str:
    """A value as table text: numbers to 4 significant digits, None as n/a, containers
    compactly."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        if len(value) > 8 and all(isinstance(v, int | float) for v in value):
            return f"{len(value)} values"
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    return str(value)


def is_stats(v) -> bool:
    """A mean / std summary (``{"mean", "std", ...}``)."""
    return isinstance(v, dict) and "mean" in v and "std" in v


def is_estimate(v) -> bool:
    """A point estimate, perhaps with intervals (``{"estimate", "percentile", "bca", ...}``)."""
    return isinstance(v, dict) and "estimate" in v


def stats_cell(s: dict) -> str:
    """``mean ± std`` (and the count of non-finite values left out, if any)."""
    if s.get("mean") is None:
        return "n/a"
    text = f"{s['mean']:.4g} ± {s['std']:.3g}"
    if s.get("non_finite"):
        text += f" ({s['non_finite']} non-finite)"
    return text


def interval_cell(m: dict) -> str:
    """Every interval of an estimate: ``percentile [lo, hi]; BCa [lo, hi]``."""
    parts = [f"{name} [{fmt(m[k][0])}, {fmt(m[k][1])}]" for k, name in INTERVALS
             if isinstance(m.get(k), list | tuple) and len(m[k]) == 2]  # fmt: skip
    return "; ".join(parts) or "n/a"


def value_cell(m) -> str:
    """An estimate (± its subset std where it has one), a mean ± std, or a plain value."""
    if is_estimate(m):
        return fmt(m["estimate"]) + (f" ± {fmt(m['std'])}" if "std" in m else "")
    if is_stats(m):
        return stats_cell(m)
    return fmt(m)


def summary_table(result: dict) -> Table:
    """Nearest-real scores overall, per class and per z-bin: one column per metric in
    ``overall`` (mean ± std for per-sample metrics, counts as they are)."""
    overall = result["overall"]
    keys = sorted((k for k in overall if k != "n"), key=lambda k: (k not in LABELS,
                  list(LABELS).index(k) if k in LABELS else 0))  # fmt: skip
    head = ["group", "n", *(LABELS.get(k, k) for k in keys)]

    def row(name: str, block: dict) -> list[str]:
        return [name, fmt(block.get("n")), *(value_cell(block[k]) if k in block else ""
                                              for k in keys)]  # fmt: skip

    rows = [row("all", overall)]
    rows += [row(f"class {c}", b) for c, b in result.get("per_class", {}).items()]
    rows += [row(f"z-bin {z}", b) for z, b in result.get("per_bin", {}).items()]
    return Table(head, rows)


def _mean_std(values: list, digits: int = 3) -> str:
    """``mean ± std`` of the finite values to ``digits`` decimals (n/a when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def bin_class_blocks(result: dict) -> list:
    """Nearest-real scores per z-bin x class, from the per-sample scores (mean ± std; how many
    samples had to be matched on the z-bin alone, the reference lacking their class there)."""
    per_sample = result.get("per_sample") or []
    groups: dict[tuple[int, int], list[dict]] = {}
    for s in per_sample:
        groups.setdefault((int(s["z_bin"]), int(s["class_id"])), []).append(s)
    if not groups:
        return []
    has_dice = any(s.get("dice") is not None for s in per_sample)
    head = ["z-bin", "class", "n", "SSIM", "PSNR (dB)", *(["mask Dice"] if has_dice else []),
            "speckled", "not matched on bin+class"]  # fmt: skip
    rows = []
    for (b, c), members in sorted(groups.items()):
        rows.append([str(b), str(c), str(len(members)),
                     _mean_std([s["ssim"] for s in members]),
                     _mean_std([s["psnr"] for s in members], 2),
                     *([_mean_std([s.get("dice") for s in members])] if has_dice else []),
                     str(sum(bool(s.get("speckled")) for s in members)),
                     str(sum(s.get("matched_on") != "bin+class" for s in members))])  # fmt: skip
    return [Heading("Nearest-real scores per z-bin and class", 3), Table(head, rows)]


def protocol_table(protocol: dict) -> Table:
    """Every protocol field as a key / value row."""
    return Table(["protocol", "value"], [[k, fmt(v)] for k, v in protocol.items()])


def distribution_blocks(block: dict) -> list:
    """One extractor's metrics per plane with their intervals, then its protocol."""
    p = block.get("protocol", {})
    level = p.get("bootstrap", {}).get("level", 0.95)
    rows = [[plane, LABELS.get(k, k), value_cell(m), interval_cell(m) if is_estimate(m) else ""]
            for plane, metrics in block.get("planes", {}).items()
            for k, m in metrics.items() if is_estimate(m) or isinstance(m, int | float)]  # fmt: skip
    rows += [["mean of planes", LABELS.get(k, k), fmt(v), ""]
             for k, v in block.get("mean_over_planes", {}).items()]  # fmt: skip
    return [
        Heading(f"Distribution metrics: `{p.get('spec', p.get('extractor', '?'))}`", 3),
        Table(["plane", "metric", "value", f"{level:.0%} CI"], rows),
        protocol_table(p),
    ]


def regional_blocks(regional: dict) -> list:
    """Lesions per size bin, and detection / Dice / IoU / lesion MSE per bin."""
    bins = ("tiny", "small", "medium", "large")
    counts = [["generated", *(fmt(regional["generated_lesions_per_bin"][b]) for b in bins)]]
    if "reference_lesions_per_bin" in regional:
        counts.append(["reference", *(fmt(regional["reference_lesions_per_bin"][b])
                                      for b in bins)])  # fmt: skip
    out = [Heading("Regional metrics by lesion size", 3),
           Text(f"{regional['bins']}; spacing {fmt(regional['spacing_mm'])} mm."),
           Table(["lesions", *bins], counts)]  # fmt: skip
    for key, title in (("vs_nearest_real", "generated masks against the nearest real item's"),
                       ("vs_control_mask", "generated masks against their control masks")):  # fmt: skip
        if key not in regional:
            continue
        r = regional[key]
        rows = [[b, fmt(r[b].get("n_lesions")), fmt(r[b].get("detection_rate")),
                 fmt(r[b].get("dice")), fmt(r[b].get("iou")), fmt(r[b].get("mse_lesion"))]
                for b in bins]  # fmt: skip
        if "background" in r:
            rows.append(["background", "", "", "", "", fmt(r["background"].get("mse"))])
        out += [Text(f"{title.capitalize()} (lesions of the latter):"),
                Table(["bin", "lesions", "detection", "Dice", "IoU", "MSE in lesions"], rows)]  # fmt: skip
    return out


def method_table(rows: dict, metrics: dict[str, str]) -> Table:
    """Rows of methods (and differences between them), columns of metrics: each an estimate
    with its intervals (``{row: {metric: estimate}}``; None cells: n/a)."""
    head = ["method", "n subjects / items"]
    for name in metrics.values():
        head += [name, f"{name} 95% CI"]
    out = []
    for method, cells in rows.items():
        first = next((c for c in cells.values() if c), None)
        count = f"{first['n_subjects']} / {first['n_items']}" if first else "n/a"
        row = [method, count]
        for key in metrics:
            m = cells.get(key)
            row += [value_cell(m), interval_cell(m)] if m else ["n/a", "n/a"]
        out.append(row)
    return Table(head, out)


REGIONS = {"all": "all real voxels", "between": "thin slices between slab centres only"}


def paired_blocks(block: dict, figure: Figure | None = None) -> list:
    """Paired scores (each sample against its own item) beside the baselines: one table per
    region (rows: methods and model - baseline differences; columns: PSNR, SSIM with their
    intervals), the figure, and the protocol."""
    out = [Heading("Paired scores: each sample against its own item", 3),
           Text(f"{block['n_samples']} samples of {block['n_subjects']} subjects against "
                f"`{block['reference']}`; {block['psnr_mse_clamped']} PSNRs had their MSE "
                "clamped. Every per-sample number is in `evaluation.json`.")]  # fmt: skip
    for region, rows in block["tables"].items():
        out += [Text(f"Over {REGIONS.get(region, region)}:"),
                method_table(rows, {"psnr": "PSNR (dB)", "ssim": "SSIM"})]  # fmt: skip
    if figure is not None:
        out.append(figure)
    return [*out, protocol_table(block["protocol"])]


def paired_markdown(block: dict, figure: bool = False) -> str:
    """:func:`paired_blocks` as a Markdown section (``interpolation.png`` beside it)."""
    fig = Figure(Path("interpolation.png"), "Thick -> thin: coronal and sagittal cuts",
                 "interpolation.png") if figure else None  # fmt: skip
    return render_markdown("", paired_blocks(block, fig)).split("\n", 2)[2]


def _flatten(value, prefix: str, rows: list) -> None:
    if len(rows) >= MAX_ROWS:
        return
    if is_estimate(value) or is_stats(value) or not isinstance(value, dict | list):
        interval = interval_cell(value) if is_estimate(value) else ""
        rows.append([prefix, value_cell(value), interval])
    elif isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        rows.append([prefix, fmt(value), ""])
    else:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), rows)


def _rows_table(value, head: list[str]) -> list:
    rows: list = []
    _flatten(value, "", rows)
    note = [Text(f"(the first {MAX_ROWS} entries; all in `evaluation.json`)")]
    note = note if len(rows) >= MAX_ROWS else []
    if not any(r[2] for r in rows):  # no interval anywhere: no interval column
        return [Table(head[:2], [r[:2] for r in rows]), *note]
    return [Table(head, rows), *note]


def other_blocks(result: dict) -> list:
    """A table for each top-level key not rendered otherwise (metrics added later), with its
    ``protocol`` (when it has one) in a table of its own."""
    out = []
    for key, value in result.items():
        if key in KNOWN:
            continue
        protocol = value.get("protocol") if isinstance(value, dict) else None
        if isinstance(protocol, dict):
            value = {k: v for k, v in value.items() if k != "protocol"}
        out.append(Heading(f"{LABELS.get(key, key.replace('_', ' '))}", 3))
        out += _rows_table({key: value} if not isinstance(value, dict | list) else value,
                           ["metric", "value", "interval"])  # fmt: skip
        if isinstance(protocol, dict):
            out += _rows_table(protocol, ["protocol", "value", "interval"])
    return out


def nearest_protocol(result: dict) -> Table:
    """How the nearest-real scores were made: samples, reference, matching, rules."""
    sampler = result.get("sampler") or {}
    rows = [
        ["samples", f"`{result['samples']}`"],
        ["checkpoint", f"{result.get('checkpoint')} (step {result.get('step')})"],
        [
            "sampler",
            fmt(
                {
                    k: sampler[k]
                    for k in ("sampler", "steps", "eta", "guidance", "seed")
                    if k in sampler
                }
            ),
        ],
        ["reference", f"`{result['reference']}` ({result['n_reference']} items)"],
        [
            "matching",
            "nearest real item of the same z-bin and class by mean squared error "
            "over the image channels (falling back to the z-bin)",
        ],
        ["speckled", result.get("speckle_rule", "n/a")],
        ["bin-mean reference SSIM", fmt(result.get("bin_mean_reference_ssim"))],
    ]
    if result.get("request"):
        rows.append(["request", fmt(result["request"])])
    return Table(["protocol", "value"], rows)


def evaluation_blocks(result: dict, directory: Path, href: str = "") -> list:
    """Every table and figure of an evaluation; ``directory`` holds its PNGs, ``href`` is
    their Markdown path prefix."""
    directory = Path(directory)
    o = result["overall"]
    blocks = [
        Text(
            f"{o['n']} samples against the nearest real item in `{result['reference']}`; "
            f"{o.get('speckled', 'n/a')} speckled."
        ),
        summary_table(result),
        nearest_protocol(result),
        *bin_class_blocks(result),
    ]
    if "control" in result:
        c = result["control"]["dice"]
        blocks.append(Text(f"Control fidelity (ControlNet): generated masks against the masks "
                           f"their control maps came from, Dice {stats_cell(c)} over "
                           f"{c.get('n')} samples."))  # fmt: skip
    for block in result.get("distribution", []):
        blocks += distribution_blocks(block)
    if "regional" in result:
        blocks += regional_blocks(result["regional"])
    if "paired" in result:
        png = directory / "interpolation.png"
        figure = Figure(png, "Thick -> thin: coronal and sagittal cuts, ground truth | linear | "
                        "cubic | model | |model - truth|", href + png.name)  # fmt: skip
        blocks += paired_blocks(result["paired"], figure if png.is_file() else None)
    blocks += other_blocks(result)
    figures = [
        Figure(directory / name, caption, href + name)
        for name, caption in (
            ("nearest.png", "Samples and their nearest real items"),
            ("errors.png", "Per-pixel error maps: samples against their nearest real items"),
            ("worst.png", "Worst batch: the samples with the lowest nearest-real SSIM"),
        )
        if (directory / name).is_file()
    ]
    return blocks + ([Heading("Figures", 3), *figures] if figures else [])


def samples_blocks(samples: Path, href: str = "") -> list:
    """A samples directory's grid and denoising trajectories (those present)."""
    out = []
    for name, caption in (("grid.png", "Samples, one row per z-bin and class"),
                          ("trajectory.png", "Denoising trajectories: the x0 prediction at a "
                           "few sampler steps")):  # fmt: skip
        if (Path(samples) / name).is_file():
            out.append(Figure(Path(samples) / name, caption, href + name))
    return out


def evaluation_document(result: dict, directory: Path, samples: Path | None = None) -> Document:
    """``evaluation/report.html``'s document: the evaluation, then the samples' figures."""
    doc = Document("MedGen evaluation")
    doc.heading("Evaluation")
    doc.extend(evaluation_blocks(result, directory))
    if samples is not None:
        figures = samples_blocks(samples)
        if figures:
            doc.heading("Samples")
            doc.extend(figures)
    doc.text("`evaluation.json` beside this file holds every number, per sample too.")
    return doc
