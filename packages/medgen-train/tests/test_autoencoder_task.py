"""The ``autoencoder`` task through the CLI (in-process; one subprocess end to end): the GAN
switch, phase-3 freezing, exact resume with the discriminator, a real training on MNI152
slices, refusals, and ``load_autoencoder``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medgen.train.cli import main

TINY_KL = [  # the network keys of vae_mni152
    "task.network.channels=8,16,16",
    "task.network.norm_num_groups=8",
    "task.network.latent_channels=2",
    "task.discriminator.channels=8",
    "task.discriminator.num_layers=2",
]
TINY = [
    "data.recipe.size=16",
    "data.recipe.n_bins=4",
    "task.eval_samples=4",
    "task.eval_images=2",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=1",
    "training.eval_every=0",
    "training.checkpoint_every=0",
    "training.tensorboard=false",
]


def fit(out: Path, *overrides: str, config: str = "vae_mni152") -> int:
    net = TINY_KL if config == "vae_mni152" else []
    return main(["fit", config, *TINY, *net, *overrides, "--out", str(out), "--quiet"])


def ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def weights(path: Path, prefix: str, file: str = "model.safetensors") -> dict:
    return {k: v for k, v in load_file(str(path / file)).items() if k.startswith(prefix)}


def rows(run: Path, name: str = "metrics.csv") -> list[dict]:
    lines = (run / name).read_text().splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, line.split(","), strict=True)) for line in lines[1:]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoencoder")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield root


@pytest.fixture(scope="module")
def base(cache):
    """A 2-update phase-1 run (its discriminator never trained: gan_start 100)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(cache / "caches"))
        assert fit(cache / "base", "training.steps=2", "task.gan_start=100") == 0
    return cache / "base"


@pytest.fixture
def root(cache, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(cache / "caches"))
    return cache


def _setup(run: Path):
    """The run's training setup rebuilt as `fit` builds it (same seed): the untrained state."""
    from medgen.train.engine.distributed import DistContext
    from medgen.train.runs import TrainedRun
    from medgen.train.tasks import TASKS, BuildContext
    from medgen.train.tasks.data import open_split

    trained = TrainedRun.open(run, "latest")
    cfg = trained.config
    torch.manual_seed(cfg.training.seed)
    dataset = open_split(Path(trained.description.cache), "train", cfg.data, "data.train_split")
    context = BuildContext(cfg, trained.description, dataset, dataset, torch.device("cpu"),
                           DistContext())  # fmt: skip
    return TASKS["autoencoder"].build(context)


def test_the_gan_switches_on_at_exactly_gan_start(root):
    """Updates 0 and 1 leave the discriminator bitwise as built; update 2 (gan_start) trains
    it, and the generator's adversarial term appears in that update's row, not before."""
    out = root / "gan"
    assert fit(out, "task.gan_start=2", "training.steps=4", "training.checkpoint_every=1",
               "training.keep_last=0") == 0  # fmt: skip
    initial = {f"discriminator.{k}": v
               for k, v in _setup(out).modules["discriminator"].state_dict().items()}  # fmt: skip
    disc = [weights(ckpt(out, s), "discriminator.") for s in (1, 2, 3, 4)]
    assert disc[0].keys() == initial.keys()
    for k, v in initial.items():
        assert torch.equal(disc[0][k], v) and torch.equal(disc[1][k], v), k
    changed = [
        k for k in initial if k.endswith("weight") and not torch.equal(disc[2][k], initial[k])
    ]
    assert changed, "update 2 did not train the discriminator"
    table = rows(out)
    assert [int(r["step"]) for r in table] == [1, 2, 3, 4]
    assert [r["loss_adv"] != "" for r in table] == [False, False, True, True]
    assert [r["loss_discriminator"] != "nan" for r in table] == [False, False, True, True]


VQ_TINY = ["task.network.channels=8,16", "task.network.num_res_channels=8,16",
           "task.network.num_embeddings=16"]  # fmt: skip


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_phase_3_trains_the_decoder_head_alone(root, base, kind):
    """Encoder and non-head decoder weights (and buffers: a VQ-VAE's EMA codebook, which
    moves in train mode) bitwise those of the init run (its EMA weights), without gradients
    and in no optimizer; the head changes."""
    from medgen.train.tasks.autoencoder import load_autoencoder

    config, extra = "vae_mni152", []
    if kind == "vq":
        config, extra, base = "vqvae_mni152", VQ_TINY, root / "vq_phase1"
        assert fit(base, "training.steps=2", "task.gan_start=100", *extra, config=config) == 0
    start, _ = load_autoencoder(base, "latest")
    out = root / f"phase3_{kind}"
    assert fit(out, "training.steps=3", "task.phase=3", f"task.init={base}",
               "task.init_checkpoint=latest", "task.gan_start=0", *extra, config=config) == 0  # fmt: skip
    head = {id(p) for p in start.decoder_head()}
    head_names = {f"autoencoder.{n}" for n, p in start.named_parameters() if id(p) in head}
    trained = weights(ckpt(out, 3), "autoencoder.")
    for name, value in start.state_dict().items():
        key = f"autoencoder.{name}"
        if key in head_names:
            continue
        assert torch.equal(trained[key], value), f"{key} changed in phase 3"
    assert any(not torch.equal(trained[k], start.state_dict()[k[len("autoencoder.") :]])
               for k in head_names)  # fmt: skip
    setup = _setup(out)
    net = setup.modules["autoencoder"]
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {f"autoencoder.{n}" for n in trainable} == head_names
    state = torch.load(ckpt(out, 3) / "training_state.pt", weights_only=True)
    params = state["objectives"]["generator"]["optimizer"]["param_groups"][0]["params"]
    assert len(params) == len(head_names)


def _tensors(path: Path) -> dict:
    out = {f"model.{k}": v for k, v in load_file(str(path / "model.safetensors")).items()}
    out.update({f"ema.{k}": v for k, v in load_file(str(path / "ema.safetensors")).items()})
    state = torch.load(path / "training_state.pt", weights_only=True)
    for name, objective in state["objectives"].items():
        for i, s in objective["optimizer"]["state"].items():
            out.update({f"{name}.{i}.{k}": v for k, v in s.items()})
    return out


def test_a_resumed_gan_run_equals_an_uninterrupted_one(root):
    """Stopped after update 2 (inside the GAN phase), resumed to 4: generator, discriminator,
    EMA and both optimizers bitwise equal to a straight run's."""
    common = ("task.gan_start=1", "training.ema_decay=0.9")
    straight, resumed = root / "straight", root / "resumed"
    assert fit(straight, *common, "training.steps=4") == 0
    assert fit(resumed, *common, "training.steps=2") == 0
    state = torch.load(ckpt(resumed, 2) / "training_state.pt", weights_only=True)
    assert set(state["objectives"]) == {"generator", "discriminator"}
    assert state["objectives"]["discriminator"]["optimizer"]["state"]  # moments saved
    assert fit(resumed, *common, "training.steps=4") == 0
    a, b = _tensors(ckpt(straight, 4)), _tensors(ckpt(resumed, 4))
    assert a.keys() == b.keys() and any(k.startswith("discriminator.") for k in a)
    assert any(k.startswith("model.discriminator.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# measured (2 shared CPU cores, 16 x 16 slices): PSNR 7.0 dB untrained -> 16.5 dB after 80
# updates (SSIM 0.05 -> 0.58); the asserted gain is half the measured one
PSNR_GAIN_DB = 5.0


def test_a_short_training_on_mni152_slices_lifts_the_validation_psnr(root):
    from medgen.train.engine.distributed import DistContext
    from medgen.train.engine.evaluators import reduce

    out = root / "trained"
    assert fit(out, "training.steps=80", "task.gan_start=60", "task.eval_samples=16") == 0
    setup = _setup(out)
    untrained = reduce(setup.evaluators[0].evaluate(setup.modules, {}, 0, DistContext()),
                       DistContext())  # fmt: skip
    final = rows(out, "eval.csv")[-1]
    gain = float(final["psnr"]) - untrained["psnr"]
    print(f"PSNR {untrained['psnr']:.2f} -> {float(final['psnr']):.2f} dB, SSIM "
          f"{untrained['ssim']:.3f} -> {float(final['ssim']):.3f}")  # fmt: skip
    assert gain > PSNR_GAIN_DB, (untrained, final)
    assert float(final["ssim"]) > untrained["ssim"] + 0.1
    assert (out / "eval" / "step_00000080" / "reconstructions.png").is_file()


def test_the_evaluator_psnr_and_dice_match_closed_forms(root, base):
    """PSNR = mean over items of 10 log10(4 / MSE) (images in [-1, 1]); Dice / IoU of a
    prediction against the mask from numpy."""
    from torch import nn

    from medgen.train.engine.distributed import DistContext
    from medgen.train.engine.evaluators import reduce
    from medgen.train.tasks.autoencoder import AutoencoderEvaluator, AutoencoderModel
    from medgen.train.tasks.autoencoder.config import AutoencoderConfig
    from medgen.train.tasks.data import DataDescription, open_split

    description = DataDescription.from_json((ckpt(base, 2) / "data.json").read_text())
    from medgen.train.config.fit import load_fit_config

    data = load_fit_config("vae_mni152", TINY).data
    dataset = open_split(Path(description.cache), "train", data, "data.train_split")

    class Shift(nn.Module):  # decode(encode(x)) = x * 0.9 + 0.05
        def encode(self, x):
            return x

        def decode(self, z):
            return z * 0.9 + 0.05

    for seg in (False, True):
        cfg = AutoencoderConfig(channels=("mask",) if seg else ("image",), seg_mode=seg,
                                eval_samples=8)  # fmt: skip
        model = AutoencoderModel.build(cfg, description, torch.device("cpu"))
        ev = AutoencoderEvaluator(model, dataset, 3, torch.device("cpu"))
        got = reduce(ev.evaluate({"autoencoder": Shift()}, {}, 0, DistContext()), DistContext())
        x = torch.stack([model.inputs({k: v[None] for k, v in dataset[i].items()
                                       if isinstance(v, torch.Tensor)})[0]
                         for i in ev.items]).double().numpy()  # fmt: skip
        y = x * 0.9 + 0.05
        if not seg:
            mse = ((y - x) ** 2).reshape(len(x), -1).mean(1)
            assert got["psnr"] == pytest.approx(np.mean(10 * np.log10(4.0 / mse)), rel=1e-5)
            continue
        p, t = y > 0, x > 0  # sigmoid(logit) > 0.5 <=> logit > 0
        inter = (p & t).reshape(len(x), -1).sum(1)
        size = p.reshape(len(x), -1).sum(1) + t.reshape(len(x), -1).sum(1)
        dice = np.where(size > 0, 2 * inter / np.maximum(size, 1), 1.0)
        union = (p | t).reshape(len(x), -1).sum(1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        assert got["dice"] == pytest.approx(dice.mean()) and got["iou"] == pytest.approx(iou.mean())


def test_the_evaluator_ms_ssim_is_the_evaluation_suites(root, base):
    """One MS-SSIM in MedGen: the evaluator's ``ms_ssim`` is the mean of
    :func:`medgen.train.evaluation.msssim.ms_ssim` over the same reconstructions, with its
    settings for the item size (16 x 16: 2 scales, window 5) recorded."""
    from torch import nn

    from medgen.train.config.fit import load_fit_config
    from medgen.train.engine.distributed import DistContext
    from medgen.train.engine.evaluators import reduce
    from medgen.train.evaluation.msssim import ms_ssim, msssim_settings
    from medgen.train.tasks.autoencoder import AutoencoderEvaluator, AutoencoderModel
    from medgen.train.tasks.autoencoder.config import AutoencoderConfig
    from medgen.train.tasks.data import DataDescription, open_split

    description = DataDescription.from_json((ckpt(base, 2) / "data.json").read_text())
    data = load_fit_config("vae_mni152", TINY).data
    dataset = open_split(Path(description.cache), "train", data, "data.train_split")

    class Blur(nn.Module):  # decode(encode(x)): a shifted blend, MS-SSIM well below 1
        def encode(self, x):
            return x

        def decode(self, z):
            return 0.6 * z + 0.3 * torch.roll(z, shifts=(1, 2), dims=(-2, -1)) + 0.05

    model = AutoencoderModel.build(AutoencoderConfig(eval_samples=8), description,
                                   torch.device("cpu"))  # fmt: skip
    ev = AutoencoderEvaluator(model, dataset, 3, torch.device("cpu"))
    got = reduce(ev.evaluate({"autoencoder": Blur()}, {}, 0, DistContext()), DistContext())
    x = torch.stack([model.inputs({k: v[None] for k, v in dataset[i].items()
                                   if isinstance(v, torch.Tensor)})[0]
                     for i in ev.items]).float()  # fmt: skip
    y = Blur().decode(x)
    settings = msssim_settings(tuple(x.shape[2:]))
    assert (settings.scales, settings.kernel_size) == (2, 5)
    want = ms_ssim(y.numpy(), x.numpy(), settings=settings)
    assert 0.2 < want.mean() < 0.95  # a discriminating case, not all ones
    assert "ms_ssim" in ev.metric_names()
    assert got["ms_ssim"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert ev.msssim_protocol == settings.protocol()


DCAE = "dcae_mni152"  # a config without the GAN (refusals about the network kind)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.loss.perceptual_weight=1"], "task.loss.perceptual_weights: perceptual_weight is"),
        (["task.loss.perceptual_weight=1", "task.loss.perceptual_weights=/nowhere/vgg16.pth"],
         "task.loss.perceptual_weights: weights file /nowhere/vgg16.pth does not exist"),
        (["data.recipe.size=18"], "spatial axis H has size 18, not divisible by the autoencoder's "
                                  "downsample factor 4"),
        ([DCAE, "task.network.variant=f7"], "task.network.variant: unknown DC-AE variant 'f7'"),
        (["model.kind=dit"], "model: an autoencoder run's network is task.network"),
        (["task.phase=3"], "task.phase: 3 fine-tunes the decoder head of a trained autoencoder"),
        (["task.channels=flair"], "task.channels: channel 'flair' is not in the data"),
        (["task.seg_mode=true"], "task.seg_mode: a mask autoencoder encodes the mask alone"),
        ([DCAE, "task.network.kind=maisi"], "task.network: MAISI's autoencoder is 3D only"),
        ([DCAE, "task.discriminator.kind=patch", "task.loss.adv_weight=0"],
         "task.loss.adv_weight: 0 with a 'patch' discriminator"),
        (["task.structured_latent.min_channels=1"], "task.structured_latent: DC-AE 1.5's"),
        (["task.init=/nowhere/run"], "task.init: /nowhere/run: no such run directory"),
        (["task.discriminator.kind=multiscale", "task.discriminator.num_layers=3"],
         "task.discriminator: Your image size is too small"),
    ],
)  # fmt: skip
def test_bad_autoencoder_configs_are_one_line_before_anything_is_written(
    root, capsys, overrides, message
):
    out = root / "refused"
    config = overrides[0] if overrides[0] == DCAE else "vae_mni152"
    overrides = [o for o in overrides if o != DCAE]
    code = fit(out, "training.steps=2", *overrides, config=config)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_load_autoencoder_gives_the_trained_ema_module(root, capsys):
    from medgen.data.cache.atomic import file_sha256
    from medgen.train.commands.fit import run_fit
    from medgen.train.config.fit import load_fit_config
    from medgen.train.tasks.autoencoder import load_autoencoder

    out = root / "loaded"
    cfg = load_fit_config("vae_mni152", [*TINY, *TINY_KL, "training.steps=3", "training.ema_decay=0.5",
                                         "task.gan_start=1"])  # fmt: skip
    result = run_fit(cfg, out, quiet=True, say=lambda *_: None)
    net, info = load_autoencoder(out)  # "best": the bundled config's best_metric psnr
    ema = result.ema.modules["autoencoder"].eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net.encode(x), ema.encode(x))
        raw = result.setup.modules["autoencoder"].eval()
        assert not torch.equal(net.encode(x), raw.encode(x))  # EMA, not the raw weights
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert info.step == 3 and info.weights == "ema"
    assert info.sha256 == file_sha256(ckpt(out, 3) / "ema.safetensors")
    assert (info.spatial_dims, info.in_channels, info.latent_channels, info.downsample) == (
        2, 1, 2, 4)  # fmt: skip
    assert info.input_shape == (1, 16, 16) and info.latent_shape == (2, 4, 4)
    assert info.channels == ("image",) and info.factors == (4, 4)
    json.dumps(info.to_dict())  # plain values
    # one-line errors
    from medgen.train.errors import CheckpointError

    for path, which, message in [
        (root / "nothing", "best", "no such run directory"),
        (out, "step_99", "no such checkpoint"),
        (root / "diffusion", "latest", "not an autoencoder run"),
    ]:
        if "diffusion" in str(path) and not path.exists():
            assert main(["fit", "quickstart", "data.recipe.size=16", "data.recipe.n_bins=4",
                         "model.channels=16,32", "model.attention_levels=false,false",
                         "training.steps=1", "training.warmup_steps=0", "data.eval_split=",
                         "--out", str(path), "--quiet"]) == 0  # fmt: skip
        with pytest.raises(CheckpointError, match=message):
            load_autoencoder(path, which)


def test_the_bundled_config_fits_and_sample_is_refused_in_a_subprocess(root, tmp_path):
    """What a user types: ``medgen-train fit vae_mni152`` (tiny), then ``sample`` on it."""
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    env = {**os.environ, "MEDGEN_QUIET": "1"}
    run = tmp_path / "vae"
    fitted = subprocess.run([*cmd, "fit", "vae_mni152", *TINY, *TINY_KL, "training.steps=2",
                             "task.gan_start=1", "--out", str(run)],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    assert "fit: autoencoder on" in fitted.stdout
    assert (run / "eval" / "step_00000002" / "reconstructions.png").is_file()
    sampled = subprocess.run([*cmd, "sample", str(run)], capture_output=True, text=True,
                             env=env, timeout=600)  # fmt: skip
    err = sampled.stderr.strip()
    assert sampled.returncode == 2 and len(err.splitlines()) == 1, err
    assert "does not generate samples; an autoencoder reconstructs" in err
    assert "medgen-train encode" in err and not (run / "samples").exists()


def _vgg16_file(path: Path) -> Path:
    """torchvision-layout VGG16 ``features`` weights (random: what the test can build)."""
    from medgen.models.autoencoders.perceptual import vgg16_features

    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in vgg16_features().state_dict().items()}, path)
    return path


def _maisi_file(path: Path) -> Path:
    from safetensors.torch import save_file

    from medgen.models.autoencoders import MaisiAutoencoder

    net = MaisiAutoencoder(num_channels=(8, 8, 8), norm_num_groups=4, num_res_blocks=(2, 2, 2),
                           attention_levels=(False,) * 3, num_splits=1)  # fmt: skip
    save_file({k: v.contiguous() for k, v in net.net.state_dict().items()}, str(path))
    return path


VOLUME = ["data.recipe.spacing=12,12,12", "data.recipe.shape=16,16,16", "training.batch_size=1",
          "task.eval_samples=1", "task.eval_images=1"]  # fmt: skip
KINDS = {
    "vq": ("vqvae_mni152", [*VQ_TINY, "task.gan_start=1"],
           ["loss_vq", "train_perplexity"], ["perplexity", "usage", "dead_codes", "ms_ssim"]),
    "dcae_structured": ("dcae_mni152", ["task.structured_latent.min_channels=2",
                                        "task.structured_latent.channel_step=1"],
                        ["loss_rec"], ["psnr", "ssim", "ms_ssim"]),
    "seg_mode": ("dcae_mni152", ["task.seg_mode=true", "task.channels=mask",
                                 "training.best_metric=dice"],
                 ["loss_bce", "loss_dice", "loss_boundary"], ["dice", "iou", "l1"]),
    "kl_anneal_perceptual": ("vae_mni152", [*TINY_KL, "task.loss.kl_anneal_steps=4",
                                            "task.loss.perceptual_weight=0.1",
                                            "task.loss.perceptual_weights={vgg}",
                                            "task.gan_start=1", "task.loss.adaptive_gan_weight=true"],
                             ["loss_perceptual", "kl_weight", "adv_weight"], ["lpips", "psnr"]),
    "maisi_3d_from_weights": ("vae3d_volumes", [*VOLUME, "task.network.kind=maisi",
                                                "task.network.num_channels=8,8,8",
                                                "task.network.norm_num_groups=4",
                                                "task.network.weights={maisi}",
                                                "task.discriminator.channels=8"],
                              ["loss_kl", "loss_adv"], ["psnr", "ssim", "ms_ssim"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(KINDS))
def test_every_network_kind_and_mode_trains_and_reports_its_metrics(root, tmp_path, case):
    config, overrides, logged, evaluated = KINDS[case]
    files = {"vgg": tmp_path / "vgg16.pth", "maisi": tmp_path / "maisi.safetensors"}
    overrides = [o.format(vgg=files["vgg"], maisi=files["maisi"]) for o in overrides]
    if any(str(files["vgg"]) in o for o in overrides):
        _vgg16_file(files["vgg"])
    if any(str(files["maisi"]) in o for o in overrides):
        _maisi_file(files["maisi"])
    out = root / f"kind_{case}"
    assert fit(out, "training.steps=4", "task.gan_start=2", *overrides, config=config) == 0
    table = rows(out)
    for key in logged:
        assert any(r.get(key) not in (None, "", "nan") for r in table), (key, table[-1])
    final = rows(out, "eval.csv")[-1]
    for key in evaluated:
        assert np.isfinite(float(final[key])), (key, final)
    if case == "kl_anneal_perceptual":  # kl_weight * min(1, update / 4), update 0-based
        assert [float(r["kl_weight"]) for r in table] == pytest.approx(
            [0, 0.25e-6, 0.5e-6, 0.75e-6]
        )
    if case == "maisi_3d_from_weights":  # started from the file: its hash is in the task state
        from medgen.models.autoencoders import sha256

        state = torch.load(ckpt(out, 4) / "training_state.pt", weights_only=True)
        assert state["ranks"][0]["task"]["init"]["sha256"] == sha256(files["maisi"])


@pytest.mark.parametrize("name", ["vae_mni152", "vqvae_mni152", "dcae_mni152", "vae3d_volumes"])
def test_the_bundled_autoencoder_configs_load_and_round_trip(tmp_path, name):
    from medgen.train.config.fit import FitConfig, bundled_names, load_fit_config
    from medgen.train.config.schema import from_mapping, to_yaml, validate
    from medgen.train.config.yaml_io import read_yaml

    cfg = load_fit_config(name, ["task.structured_latent.min_channels=2"] if "dcae" in name else [])
    assert cfg.task.kind == "autoencoder" and name in bundled_names()
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert validate(from_mapping(FitConfig, read_yaml(path))) == cfg
