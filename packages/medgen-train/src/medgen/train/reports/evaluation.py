"""``evaluation.md``: an evaluation's numbers as tables a paper can take."""

from __future__ import annotations

from medgen.train.reports.document import render_markdown
from medgen.train.reports.evaluation_blocks import bin_class_blocks


def _cell(stats: dict | None, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def evaluation_table(result: dict) -> list[str]:
    """Markdown lines: overall, per class and per z-bin rows (mean ± std)."""
    has_dice = "dice" in result["overall"]
    head = "| group | n | SSIM | PSNR (dB) |" + (" mask Dice |" if has_dice else "") + " speckled |"
    lines = [head, "|---" * (5 + int(has_dice)) + "|"]

    def row(name: str, block: dict) -> str:
        dice = f" {_cell(block.get('dice'))} |" if has_dice else ""
        return (
            f"| {name} | {block['n']} | {_cell(block['ssim'])} | {_cell(block['psnr'], 2)} |"
            f"{dice} {block['speckled']} |"
        )

    lines.append(row("all", result["overall"]))
    for c, block in result["per_class"].items():
        lines.append(row(f"class {c}", block))
    for b, block in result["per_bin"].items():
        lines.append(row(f"z-bin {b}", block))
    return lines


METRICS = (("fid", "FID"), ("kid", "KID"), ("cmmd", "CMMD"), ("precision", "precision"),
           ("recall", "recall"))  # fmt: skip


def _ci(pair) -> str:
    return "n/a" if not pair else f"[{pair[0]:.4g}, {pair[1]:.4g}]"


def distribution_lines(block: dict) -> list[str]:
    """One extractor's metrics (per plane) with CIs, and its protocol, as Markdown."""
    p = block["protocol"]
    b = p["bootstrap"]
    lines = [
        f"## Distribution metrics: `{p['spec']}`",
        "",
        f"| plane | metric | value | {int(b['level'] * 100)}% CI (percentile) | "
        f"{int(b['level'] * 100)}% CI (BCa) |",
        "|---|---|---|---|---|",
    ]
    for plane, metrics in block["planes"].items():
        for key, name in METRICS:
            m = metrics[key]
            extra = f" ± {m['std']:.3g} (subsets)" if key == "kid" else ""
            lines.append(f"| {plane} | {name} | {m['estimate']:.4g}{extra} | "
                         f"{_ci(m['percentile'])} | {_ci(m['bca'])} |")  # fmt: skip
    for key, value in block.get("mean_over_planes", {}).items():
        lines.append(f"| mean of planes | {dict(METRICS)[key]} | {value:.4g} | | |")
    lines += ["", "Protocol:", ""]
    fields = ("extractor", "architecture", "weights", "weights_sha256", "dim", "input",
              "planes", "feature_rows_per_sample", "n_generated", "n_reference",
              "reference_split", "note")  # fmt: skip
    lines += [f"- {f}: `{p[f]}`" for f in fields if p.get(f) is not None]
    lines.append(
        f"- bootstrap: {b['replicates']} replicates, seed {b['seed']}, {b['resampling']}; "
        "KID: polynomial kernel (degree 3, gamma 1/d, coef 1), mean ± std over subsets; "
        "CMMD: RBF sigma 10, x1000; precision / recall: k = 3"
    )
    return [*lines, ""]


def regional_lines(regional: dict) -> list[str]:
    """Regional metrics by lesion size as Markdown."""
    bins = ("tiny", "small", "medium", "large")
    lines = [f"## Regional metrics by lesion size ({regional['bins']}; spacing "
             f"{regional['spacing_mm']} mm)", ""]  # fmt: skip
    counts = [("generated", regional["generated_lesions_per_bin"])]
    if "reference_lesions_per_bin" in regional:
        counts.append(("reference", regional["reference_lesions_per_bin"]))
    lines += ["| lesions | " + " | ".join(bins) + " |", "|---" * 5 + "|"]
    lines += [f"| {n} | " + " | ".join(str(c[b]) for b in bins) + " |" for n, c in counts]
    for key, title in (("vs_nearest_real", "generated masks against the nearest real item's"),
                       ("vs_control_mask", "generated masks against their control masks")):  # fmt: skip
        if key not in regional:
            continue
        r = regional[key]
        lines += ["", f"{title} (lesions of the latter):", "",
                  "| bin | lesions | detection | Dice | IoU | MSE in lesions |", "|---" * 6 + "|"]  # fmt: skip

        def f(v):
            return "n/a" if v is None else f"{v:.3f}"

        for b in bins:
            x = r[b]
            lines.append(f"| {b} | {x['n_lesions']} | {f(x.get('detection_rate'))} | "
                         f"{f(x.get('dice'))} | {f(x.get('iou'))} | {f(x.get('mse_lesion'))} |")  # fmt: skip
        if "background" in r:
            lines.append(f"| background | | | | | {f(r['background']['mse'])} |")
    return [*lines, ""]


def diversity_lines(div: dict) -> list[str]:
    """Diversity (mean pairwise MS-SSIM of the samples) overall and per group, as Markdown."""
    p, m = div["protocol"], div["protocol"]["ms_ssim"]
    lines = [f"## Diversity: mean MS-SSIM over pairs of samples (lower: more diverse; "
             f"{m['scales']} scales, Gaussian window {m['kernel_size']}, sigma {m['sigma']}; "
             f"up to {p['max_pairs']} pairs per group, seed {p['seed']})", "",
             "| group | samples | pairs | MS-SSIM |", "|---|---|---|---|"]  # fmt: skip
    groups = {"all": div["overall"], **div.get("per_group", {})}
    for name, g in groups.items():
        lines.append(f"| {name} | {g['n_samples']} | {g['n_pairs']} | {_cell(g)} |")
    return [*lines, ""]


def evaluation_markdown(result: dict) -> str:
    """The whole ``evaluation.md``."""
    o = result["overall"]
    lines = [
        "# Evaluation",
        "",
        f"Samples `{result['samples']}` (checkpoint {result.get('checkpoint')}, step "
        f"{result.get('step')}) against the nearest real item of the same z-bin and class in "
        f"`{result['reference']}` ({result['n_reference']} items).",
        "",
        *evaluation_table(result),
        "",
        f"Speckled: {o['speckled']} of {o['n']} ({result['speckle_rule']}). Reference: the "
        f"mean image of each z-bin scores SSIM {result['bin_mean_reference_ssim']:.3f} against "
        "its nearest real slice.",
        "",
        "![nearest](nearest.png)",
        "",
        *render_markdown("", bin_class_blocks(result)).split("\n")[2:],  # per z-bin x class
    ]
    warning = (result.get("non_finite") or {}).get("warning")
    if warning:
        lines[2:2] = [f"**Warning:** {warning}.", ""]
    if "diversity" in result:
        lines += diversity_lines(result["diversity"])
    if "lpips" in result:
        lp = result["lpips"]
        lines += [f"LPIPS against the nearest real item: {_cell(lp)} over {lp['n']} samples "
                  f"(weights `{lp['protocol']['weights']}`, sha256 "
                  f"`{lp['protocol']['weights_sha256'][:12]}`, heads "
                  f"`{lp['protocol']['heads']}`).", ""]  # fmt: skip
    for block in result.get("distribution", []):
        lines += distribution_lines(block)
    if "regional" in result:
        lines += regional_lines(result["regional"])
    if "control" in result:
        c = result["control"]["dice"]
        lines[-3:-3] = [
            f"Control fidelity (ControlNet): the generated masks against the masks their "
            f"control maps came from, Dice {_cell(c)} over {c['n']} samples.",
            "",
        ]
    return "\n".join(lines)
