"""DC-AE 1.5's augmented diffusion training (``task.augmented_channels``): per sample, the
latent channels beyond a count drawn from {min, min + step, ..., all} are zero in x0 and in
the noise and weigh nothing in the loss; the draw comes from the task's generator. Checked on
the batches a real (tiny) latent fit hands the loss, and its bad values as one line."""

import pytest
import torch

from medgen.train.cli import main
from medgen.train.tasks.diffusion.task import DiffusionModel

TINY = ["model.channels=16,32", "model.attention_levels=false,false", "training.steps=3",
        "training.batch_size=4", "training.warmup_steps=1", "training.eval_every=0",
        "task.eval_samples=4", "data.oversample=1", "task.clip_x0=null", "--quiet"]  # fmt: skip


def _fit(toy_runs, tmp_path, *extra):
    cache = toy_runs.make_cache(tmp_path / "data")
    ae = toy_runs.make_run(tmp_path / "ae")  # 3 latent channels
    space = ["task.space.kind=latent", f"task.space.autoencoder={ae}"]
    return main(["fit", "lesions_demo", f"data.cache={cache}", *space, *TINY, *extra,
                 "--out", str(tmp_path / "run")])  # fmt: skip


def test_channels_beyond_the_drawn_count_are_zero_and_out_of_the_loss(
    tmp_path, toy_runs, monkeypatch
):
    seen = []
    real = DiffusionModel.losses

    def record(self, net, batch, t, noise, x0, valid, cond, extra=False, weighting=None):
        if extra:  # training batches only
            seen.append((x0.detach().clone(), noise.clone(), valid))
        return real(self, net, batch, t, noise, x0, valid, cond, extra, weighting)

    monkeypatch.setattr(DiffusionModel, "losses", record)
    assert _fit(toy_runs, tmp_path, "task.augmented_channels=1,1") == 0
    counts = []
    for x0, noise, w in seen:
        assert w is not None and w.shape == x0.shape  # per-channel weights
        for i in range(x0.shape[0]):
            kept = int((w[i].flatten(1) > 0).any(1).sum())
            counts.append(kept)
            assert torch.equal(w[i, :kept] > 0, torch.ones_like(w[i, :kept], dtype=torch.bool))
            for z in (x0[i, kept:], noise[i, kept:], w[i, kept:]):
                assert torch.count_nonzero(z) == 0
            assert torch.count_nonzero(x0[i, :kept]) > 0
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1, counts


@pytest.mark.parametrize(
    "value, message",
    [("2,2", "divide latent_channels - min_channels"), ("4,1", "min_channels must be in"),
     ("1", "expected [min_channels, channel_step]")],
)  # fmt: skip
def test_bad_augmented_channels_are_one_line(tmp_path, toy_runs, capsys, value, message):
    assert _fit(toy_runs, tmp_path, f"task.augmented_channels={value}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "augmented_channels" in err[0] and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_augmented_channels_need_a_latent_space(capsys):
    assert (
        main(["fit", "quickstart", "task.augmented_channels=1,1", "--out", "/nonexistent/x"]) == 2
    )
    assert "task.space.kind=latent" in capsys.readouterr().err
