"""``evaluation.md``: an evaluation's numbers as tables a paper can take."""

from __future__ import annotations


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
    ]
    if "control" in result:
        c = result["control"]["dice"]
        lines[-3:-3] = [
            f"Control fidelity (ControlNet): the generated masks against the masks their "
            f"control maps came from, Dice {_cell(c)} over {c['n']} samples.",
            "",
        ]
    return "\n".join(lines)
