"""Evaluation figures: per-pixel error maps (the absolute error of the right pair, one colour
scale), the worst batch (lowest SSIM first), reconstruction figures, and denoising
trajectories captured from a real sampler's per-step callback."""

import numpy as np
import pytest
import torch
from PIL import Image

from medgen.models import DDPM, samplers, schedules
from medgen.train.evaluation import figures
from medgen.train.evaluation.nearest import SampleScore
from medgen.train.tasks.diffusion.trajectory import TrajectoryRecorder, trajectory_steps


def test_abs_error_is_the_per_pixel_difference_of_the_middle_slice():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (2, 5, 6, 7))
    np.testing.assert_array_equal(figures.abs_error(a, b), np.abs(a[2] - b[2]))
    np.testing.assert_array_equal(figures.abs_error(a[0], b[0]), np.abs(a[0] - b[0]))
    with pytest.raises(ValueError, match=r"shapes \(6, 7\) and \(6, 6\)"):
        figures.abs_error(a[0], b[0, :, :6])


def _heat_colours(path):
    """The distinct colours of a figure's right third (the heat maps), as a set."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return {tuple(int(v) for v in c) for c in rgb[:, int(rgb.shape[1] * 0.66) :].reshape(-1, 3)}


def test_error_maps_draw_the_errors_of_their_pairs(tmp_path):
    a = np.zeros((16, 16))
    b = np.zeros((16, 16))
    b[:, 8:] = 1.0
    errors = figures.error_maps(tmp_path / "e.png", [{"a": a, "b": b, "label": "x"},
                                                     {"a": b, "b": b, "label": "y"}])  # fmt: skip
    np.testing.assert_array_equal(errors[0], np.abs(a - b))
    assert not errors[1].any()
    # one scale for the figure: the worst pixel is the top of the colour bar (magma's end)
    colours = _heat_colours(tmp_path / "e.png")
    import matplotlib

    top = tuple(round(255 * v) for v in matplotlib.colormaps["magma"](1.0)[:3])
    assert any(max(abs(c - t) for c, t in zip(col, top, strict=True)) <= 2 for col in colours)


def test_reconstruction_figure(tmp_path):
    x = np.linspace(-1, 1, 2 * 8 * 8).reshape(2, 8, 8)
    errors = figures.reconstruction_figure(tmp_path / "r.png", x, x * 0.5, ["a", "b"])
    np.testing.assert_allclose(errors[1], np.abs(x[1] * 0.5))
    with Image.open(tmp_path / "r.png") as im:
        assert im.size[0] > 200 and im.size[1] > 150


def _score(i, ssim):
    return SampleScore(index=i, z_bin=0, class_id=0, nearest=i, matched_on="bin+class",
                       psnr=10.0, ssim=ssim, dice=None, laplacian_ratio=1.0)  # fmt: skip


def test_worst_samples_are_the_lowest_ssim_first():
    ssim = np.random.default_rng(1).uniform(-0.2, 1, 40).round(1)  # with ties
    scores = [_score(i, float(s)) for i, s in enumerate(ssim)]
    want = np.lexsort((np.arange(40), ssim))[:8]
    assert [s.index for s in figures.worst_samples(scores, 8)] == list(want)


def test_trajectory_steps():
    assert list(trajectory_steps(4, 6)) == [0, 1, 2, 3]
    assert list(trajectory_steps(50, 6)) == [0, 10, 20, 29, 39, 49]
    assert list(trajectory_steps(1, 6)) == [0]
    with pytest.raises(ValueError):
        trajectory_steps(0, 6)


def test_trajectory_recorder_keeps_the_samplers_x0_of_the_first_k():
    """Two batches through DDIM (eta 0); the recorder sees each step's callback and keeps the
    x0 predictions of samples 0..3 at the chosen steps, decoded; DDIM's last step goes to
    alpha_bar = 1, so the last x0 is the sample itself."""
    strategy = DDPM(schedules.cosine(1000), prediction="epsilon")
    steps = 10
    recorder = TrajectoryRecorder(4, steps, decode=lambda z: z * 0.5, frames=4)
    assert list(recorder.steps) == [0, 3, 6, 9]

    abar = strategy.schedule.alphas_cumprod.float()
    data = torch.linspace(-0.8, 0.8, 64).reshape(1, 1, 8, 8)

    def model(x, t, cond):  # 90% of the true noise of the data ``data``: x0 moves towards it
        a = abar[t.long()].reshape(-1, 1, 1, 1)
        return 0.9 * (x - a.sqrt() * data) / (1 - a).sqrt()

    everything, finals = {}, {}
    for indices in ([0, 1, 2], [3, 4, 5]):
        x_T = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(indices[0]))

        def callback(info, indices=indices):
            everything[(indices[0], info["i"])] = info["x0"].clone()
            recorder(info, indices)

        out = samplers.ddim(model, strategy, x_T, steps, eta=0.0, clip_x0=1.0, callback=callback)
        for r, i in enumerate(indices):
            finals[i] = out[r]
    arrays = recorder.arrays()
    assert list(arrays["index"]) == [0, 1, 2, 3] and arrays["x0"].shape == (4, 4, 1, 8, 8)
    assert np.isfinite(arrays["t"]).all() and np.all(np.diff(arrays["t"]) < 0)
    for k, i in enumerate(arrays["index"]):
        batch, row = (0, i) if i < 3 else (3, i - 3)
        for f, step in enumerate(recorder.steps):
            want = (everything[(batch, step)][row] * 0.5).clamp(-1, 1).numpy()
            np.testing.assert_array_equal(arrays["x0"][k, f], want)
        np.testing.assert_allclose(arrays["x0"][k, -1], (finals[i] * 0.5).clamp(-1, 1),
                                   atol=1e-5)  # fmt: skip
    assert np.abs(arrays["x0"][:, 0] - arrays["x0"][:, -1]).mean() > 0.05  # it moved
    assert np.abs(arrays["x0"]).max() <= 0.5  # decoded, never clamped here


def test_trajectory_figure(tmp_path):
    frames = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8))
    figures.trajectory_figure(tmp_path / "t.png", frames, np.array([0, 4, 9]),
                              np.array([999.0, 500.0, 0.0]), ["#0", "#1"])  # fmt: skip
    with Image.open(tmp_path / "t.png") as im:
        w, h = im.size
    assert w > h > 100
