"""The HTML reports of a real tiny run (fit -> sample -> evaluate --features -> report):
well-formed HTML5 with every string escaped (the run directory's own name carries markup),
self-contained (every image a PNG data: URI that decodes, no script, no external URL), every
metric with its intervals and protocol, the figures of the right pairs, the figures in
TensorBoard too, and the page rendered by a real headless Chromium without console errors.
Chromium is required in CI (``CI=true``); elsewhere the browser test skips without it."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgen.data import CacheDataset
from medgen.train.cli import main
from medgen.train.config.tiny import TINY as TINY_RUN
from medgen.train.evaluation.figures import error_maps
from medgen.train.reports.document import Document
from medgen.train.reports.evaluation_blocks import evaluation_document, fmt
from medgen.train.reports.html import ReportError

TINY = list(TINY_RUN)
HOSTILE = "run <i>&\"'"  # a directory name a report must escape
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}
ALLOWED = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code",
           "ul", "li", "div", "table", "thead", "tbody", "tr", "th", "td", "figure", "img",
           "figcaption"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    run = root / HOSTILE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "quickstart", *TINY, "--out", str(run), "--quiet"]) == 0
        assert main(["sample", str(run), "--steps", "4", "--n", "16", "--out", str(run / "s"),
                     "--no-nifti", "--quiet"]) == 0  # fmt: skip
        assert main(["evaluate", str(run / "s"), "--features", "random:0", "--bootstrap", "20",
                     "--quiet"]) == 0  # fmt: skip
        assert main(["report", str(run), "--samples", str(run / "s")]) == 0
    return run


class Page(HTMLParser):
    """A strict reading of a page: nesting checked, tags, attributes, images and text kept."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.images, self.attrs, self.text = [], [], [], [], []
        self.cells: list[str] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags {self.stack}"
        self.text = "".join(self.text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("td", "th"):
            self.cells.append("")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        assert tag not in VOID, f"end tag of void element <{tag}>"
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if {"td", "th"} & set(self.stack):
            self.cells[-1] += data


def check_page(path: Path) -> Page:
    """Well-formed, self-contained, every image a decodable PNG of its stated size."""
    text = path.read_text()
    assert text.startswith('<!DOCTYPE html>\n<html lang="en">')
    page = Page(text)
    assert set(page.tags) <= ALLOWED, set(page.tags) - ALLOWED
    assert page.tags.count("html") == page.tags.count("body") == page.tags.count("title") == 1
    for name, value in page.attrs:  # no URL but embedded PNGs; no script or handler
        assert not name.startswith("on"), name
        if name in ("src", "href", "srcset", "action", "poster"):
            assert value.startswith("data:image/png;base64,"), value[:60]
    assert not re.search(r"(https?:|ftp:|file:|//[a-z])", re.sub(r"base64,[^\"]*", "", text))
    for img in page.images:
        png = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"), validate=True)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            w, h = im.size
        scale = int(img["width"]) // w
        assert scale >= 1 and (int(img["width"]), int(img["height"])) == (w * scale, h * scale)
        assert img["alt"]
    return page


def test_run_report_html(tiny):
    page = check_page(tiny / "report.html")
    md = (tiny / "report.md").read_text()
    assert HOSTILE in page.text  # shown literally: escaped, never markup
    alts = [i["alt"] for i in page.images]
    assert len(alts) == 8, alts  # curves, x0 PSNR, x0 predictions, grid, trajectory, 3 eval
    for needle in ("Loss curves", "x0-prediction PSNR", "x0 predictions", "Samples, one row",
                   "Denoising trajectories", "Samples and their nearest", "Per-pixel error maps",
                   "Worst batch"):  # fmt: skip
        assert sum(needle in a for a in alts) == 1, needle
        assert needle in md  # the same figures in report.md
    for href in ("report/curves.png", "s/grid.png", "s/trajectory.png", "s/evaluation/worst.png",
                 "s/evaluation/errors.png", "eval/step_00000002/x0_predictions.png"):  # fmt: skip
        assert f"({href})" in md and (tiny / href).is_file()
    for needle in ("Distribution metrics", "weights_sha256", "reference_split", "z-bin 3"):
        assert needle in page.text and needle in md


def test_evaluation_report_html_has_every_metric_and_protocol(tiny):
    out = tiny / "s" / "evaluation"
    page = check_page(out / "report.html")
    assert len(page.images) == 5  # nearest, errors, worst, samples grid, trajectory
    result = json.loads((out / "evaluation.json").read_text())
    cells = page.cells
    o = result["overall"]
    assert f"{o['ssim']['mean']:.4g} ± {o['ssim']['std']:.3g}" in cells
    assert f"{o['psnr']['mean']:.4g} ± {o['psnr']['std']:.3g}" in cells
    (block,) = result["distribution"]
    for name, m in block["planes"]["2d"].items():
        value = fmt(m["estimate"]) + (f" ± {fmt(m['std'])}" if "std" in m else "")
        assert value in cells, (name, value)
        ci = f"percentile [{fmt(m['percentile'][0])}, {fmt(m['percentile'][1])}]"
        assert any(c.startswith(ci) and "BCa [" in c for c in cells), (name, ci)
    for key, value in block["protocol"].items():  # the protocol beside the numbers
        assert key in cells and fmt(value) in cells, key
    assert f"{result['reference']} ({result['n_reference']} items)" in page.text


def test_figures_show_the_right_pairs(tiny):
    """worst.png is the error-map figure of the 8 lowest-SSIM samples against their nearest
    real items, found here by brute force over the reference split."""
    out = tiny / "s" / "evaluation"
    result = json.loads((out / "evaluation.json").read_text())
    with np.load(tiny / "s" / "samples.npz") as npz:
        images, bins, classes = npz["images"], npz["z_bin"], npz["class_id"]
    cache, split = result["reference"].rsplit(":", 1)
    ds = CacheDataset(cache, split)
    ref = [ds[i] for i in range(len(ds))]
    ref_images = np.stack([r["image"].numpy() for r in ref])
    same = np.array([[int(r["z_bin"]) == b and int(r["class_id"]) == c for r in ref]
                     for b, c in zip(bins, classes, strict=True)])  # fmt: skip
    mse = ((images[:, None] - ref_images[None]) ** 2).mean(axis=(2, 3, 4))
    nearest = np.where(same, mse, np.inf).argmin(1)
    ssim = np.array([s["ssim"] for s in result["per_sample"]])
    worst = np.lexsort((np.arange(len(ssim)), ssim))[:8]
    rows = [{"a": images[i, 0], "b": ref_images[nearest[i], 0],
             "label": f"#{i} bin {bins[i]} class {classes[i]}\nSSIM {ssim[i]:.2f}"}
            for i in worst]  # fmt: skip
    error_maps(tiny / "expected_worst.png", rows)
    got = np.asarray(Image.open(out / "worst.png"))
    want = np.asarray(Image.open(tiny / "expected_worst.png"))
    assert got.shape == want.shape and np.array_equal(got, want)


def test_trajectory_ends_at_the_sample(tiny):
    """Euler's last x0 prediction is its last step, so each trajectory ends at its sample."""
    with np.load(tiny / "s" / "trajectory.npz") as t, np.load(tiny / "s" / "samples.npz") as s:
        assert list(t["index"]) == [0, 1, 2, 3] and list(t["steps"]) == [0, 1, 2, 3]
        assert np.allclose(t["t"], [1.0, 0.75, 0.5, 0.25])
        assert t["x0"].shape == (4, 4, 2, 16, 16)
        np.testing.assert_allclose(t["x0"][:, -1, 0], s["images"][:4, 0], atol=1e-5)


def test_figures_in_tensorboard(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tiny / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["images"])
    for name in ("report_curves", "s_trajectory", "s_evaluation_errors", "s_evaluation_worst"):
        assert f"images/report/{name}" in tags, tags
    (event,) = acc.Images("images/report/s_evaluation_worst")
    assert event.step == 2
    with Image.open(io.BytesIO(event.encoded_image_string)) as im:
        assert im.size == Image.open(tiny / "s" / "evaluation" / "worst.png").size


def test_unknown_metrics_are_rendered_with_their_intervals(tiny, tmp_path):
    out = tiny / "s" / "evaluation"
    result = json.loads((out / "evaluation.json").read_text())
    result["overall"]["ms_ssim"] = {"mean": 0.25, "std": 0.125, "n": 16, "non_finite": 2}
    result["novelty"] = {"pairwise_ms_ssim": {"estimate": 0.5, "percentile": [0.25, 0.75]},
                         "nan_samples": 3, "protocol": {"estimator": "new <thing>"}}  # fmt: skip
    result["per_item"] = [{"x": i} for i in range(100)]
    (tmp_path / "report.html").write_text(evaluation_document(result, out).html())
    page = check_page(tmp_path / "report.html")
    assert "MS-SSIM" in page.cells and "0.25 ± 0.125 (2 non-finite)" in page.cells
    assert "pairwise_ms_ssim" in page.cells and "percentile [0.25, 0.75]" in page.cells
    assert "nan_samples" in page.cells and "3" in page.cells
    assert "estimator" in page.cells and "new <thing>" in page.cells  # its own protocol table
    assert "protocol.estimator" not in page.cells
    assert "59.x" in page.cells and "60.x" not in page.cells and "the first 60 entries" in page.text


def test_strings_are_escaped_and_figures_checked(tmp_path):
    evil = "<script>alert('x')</script> & \"q\" `<b>`"
    doc = Document(evil)
    doc.heading(evil)
    doc.text(evil)
    doc.items([evil])
    doc.table([evil], [[evil]])
    (tmp_path / "report.html").write_text(doc.html())
    page = check_page(tmp_path / "report.html")
    assert page.text.count("alert('x')") == 7  # title, h1, h2, p, li, th, td
    assert evil.replace("`", "") in page.cells
    doc.figure(tmp_path / "missing.png", evil)
    with pytest.raises(ReportError, match="missing.png: figure missing"):
        doc.html()
    doc.blocks[-1].path = tmp_path / "report.html"
    with pytest.raises(ReportError, match="report.html: not a PNG file"):
        doc.html()


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium not found but CI is set: .ci/run installs it (apt chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); required in CI")
    return exe


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    proc = subprocess.run([chromium(), *flags, *args, page.as_uri()], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return proc


@pytest.mark.parametrize("which", ["report.html", "s/evaluation/report.html"])
def test_chromium_renders_the_report(tiny, tmp_path, which):
    page = tiny / which
    shot = tmp_path / "shot.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,12000")  # whole page
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape == (12000, 1200, 3)
    ink = (rgb < 230).any(-1).mean()  # text, tables and figures, not a blank page
    assert ink > 0.05, ink
    colours = np.unique(rgb.reshape(-1, 3) // 16, axis=0)
    assert len(colours) > 100, len(colours)  # the figures drawn (heat maps, masks), not boxes
    dom = browse(page, tmp_path, "--dump-dom").stdout
    parsed = Page(dom)
    assert len(parsed.images) == len(check_page(page).images)
    assert "protocol" in parsed.cells and "FID" in parsed.cells
    assert "weights_sha256" in parsed.cells and HOSTILE in parsed.text


def test_bad_trajectory_count_is_refused_before_writing(tiny, tmp_path, capsys):
    code = main(["sample", str(tiny), "--trajectory", "-1", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--trajectory" in err, err
    assert not (tmp_path / "s").exists()
