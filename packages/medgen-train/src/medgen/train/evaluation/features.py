"""Feature extractors for distribution metrics, from local weights only (nothing is fetched).

An extractor is named by a spec string:

- ``medicalnet:PATH``: MONAI's 3D ``resnet10`` / ``resnet18`` / ``resnet50`` in the MedicalNet
  layout (1 input channel, ``feed_forward=False``, MedicalNet's shortcut / downsample-bias
  settings), the depth found from the state dict at PATH (a plain state dict, or MedicalNet's
  ``{"state_dict": {"module.*": ...}}``). Input: each volume z-scored (its own mean and std),
  each image channel fed as its own grayscale volume, features (global-average-pooled,
  512 or 2048 per channel) concatenated; no resizing. 3D samples only.
- ``resnet2d:PATH``: MONAI's 2D ``resnet50`` (3 input channels, ``feed_forward=False``; an
  ImageNet / RadImageNet-style state dict converted to MONAI's names). Input: intensities
  mapped from [-1, 1] to [0, 1], then the ImageNet mean / std; grayscale replicated to 3
  channels (multi-channel: channel mean first); bilinear resize to 224 x 224. 3D samples use
  the 2.5D protocol: slices on the XY, YZ and ZX planes, each plane its own feature set.
- ``autoencoder:RUN_DIR[:CHECKPOINT]``: the encoder of a MedGen autoencoder run (``task.kind:
  autoencoder``; CHECKPOINT ``best`` by default, or ``latest`` / ``step_N``), loaded by
  :func:`medgen.train.tasks.autoencoder.load.load_autoencoder` (verified against the run's
  hashes, EMA weights when kept). Features: its deterministic latent (``encode``: a KL-VAE's
  posterior mean), per latent channel the spatial mean and the spatial (population) std,
  concatenated: ``2 x latent_channels`` features, so a 4-channel latent gives 8. Input: the
  samples as they are (the data range the autoencoder was trained on), no resizing; 2D slices
  or 3D volumes as the autoencoder was trained, with its number of channels. A domain
  extractor that needs no download: train it on your own data.
- ``random:SEED``: a fixed random-weight convolutional extractor (8 features, seeded
  initialisation, all image channels in; 2D, or 3D for volumes). For tests and demos only:
  its numbers are **not comparable with any paper's**.

Each extractor has a ``protocol`` dict (name, spec, weights path and sha256, input handling)
that the evaluation records beside every number. ``extract(images)`` returns a dict plane ->
``(N, S, d)`` features, S feature rows per sample (the slices of a volume in 2.5D; 1 else).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PLANES_25D = {"XY": 0, "ZX": 1, "YZ": 2}  # plane -> the array axis (z, y, x) sliced along
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_DIM = 8


class FeatureError(ValueError):
    """An extractor that cannot be built or used (bad spec, weights, input)."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FeatureError(f"{path}: no such weights file (extractors only use local weights)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is one error
        raise FeatureError(f"{path}: not a torch state dict ({type(e).__name__})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FeatureError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load(model: torch.nn.Module, sd: dict) -> tuple[int, str | None]:
    """Loads ``sd`` when it fits ``model`` exactly: ``(0, None)``; else (number of
    mismatched keys, what does not fit)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or extra or bad:
        return len(missing) + len(extra) + len(bad), (f"{len(missing)} missing (e.g. {missing[:1]}), {len(extra)} unexpected "
                f"(e.g. {extra[:1]}), {len(bad)} of another shape (e.g. {bad[:1]})")  # fmt: skip
    model.load_state_dict(sd)
    return 0, None


def medicalnet_model(depth: int) -> torch.nn.Module:
    """MONAI's 3D MedicalNet-layout ResNet of ``depth`` (10, 18 or 50), no head."""
    from monai.networks.nets import resnet

    bias_downsample = depth in (18, 34)
    shortcut = "A" if depth in (18, 34) else "B"
    return getattr(resnet, f"resnet{depth}")(spatial_dims=3, n_input_channels=1,
                                             feed_forward=False, shortcut_type=shortcut,
                                             bias_downsample=bias_downsample)  # fmt: skip


def resnet2d_model() -> torch.nn.Module:
    """MONAI's 2D ResNet-50, 3 input channels, no head."""
    from monai.networks.nets import resnet

    return resnet.resnet50(spatial_dims=2, n_input_channels=3, feed_forward=False)


class RandomConv(torch.nn.Module):
    """Two seeded random convolutions, tanh, global average pooling: RANDOM_DIM features."""

    def __init__(self, channels: int, dims: int, seed: int):
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.a = conv(channels, 16, 3, stride=2, padding=1)
        self.b = conv(16, RANDOM_DIM, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x):
        """(N, RANDOM_DIM) features."""
        x = self.b(torch.tanh(self.a(x)))
        return torch.tanh(x).flatten(2).mean(-1)


CHECKPOINT_NAME = re.compile(r"latest|best|(step_)?\d+")


class PooledLatent(torch.nn.Module):
    """An autoencoder's deterministic latent, per channel its spatial mean and std."""

    def __init__(self, autoencoder: torch.nn.Module, spec: str):
        super().__init__()
        self.autoencoder, self.spec = autoencoder, spec

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` when the autoencoder can encode it, else one FeatureError naming both."""
        ae = self.autoencoder
        want = f"(N, {ae.in_channels}, {'D, ' if ae.spatial_dims == 3 else ''}H, W)"
        if x.ndim - 2 != ae.spatial_dims or x.shape[1] != ae.in_channels:
            raise FeatureError(
                f"{self.spec}: the autoencoder encodes {ae.spatial_dims}D inputs {want}; these "
                f"samples are {list(x.shape)}"
            )
        try:
            check_shape = getattr(ae, "check_shape", None)  # the Autoencoder protocol's
            if check_shape is not None:
                check_shape(tuple(x.shape))
        except ValueError as e:
            raise FeatureError(f"{self.spec}: {e}") from None
        return x

    def forward(self, x):
        """(N, 2 x latent_channels): the channel means, then the channel stds."""
        z = self.autoencoder.encode(x).flatten(2)
        return torch.cat([z.mean(-1), z.std(-1, unbiased=False)], dim=1)


def _autoencoder(spec: str, arg: str, protocol: dict) -> PooledLatent:
    """The pooled-latent extractor of ``autoencoder:RUN_DIR[:CHECKPOINT]``; fills ``protocol``."""
    from medgen.data import DataError
    from medgen.train.errors import MedGenError
    from medgen.train.tasks.autoencoder import load as ae_load

    run_dir, sep, checkpoint = arg.rpartition(":")
    if not sep or not CHECKPOINT_NAME.fullmatch(checkpoint):
        run_dir, checkpoint = arg, "best"
    if not Path(run_dir).expanduser().is_dir():
        raise FeatureError(
            f"--features {spec!r}: {run_dir}: no such run directory (expected the fit run of "
            "a task.kind: autoencoder run)"
        )
    try:
        net, info = ae_load.load_autoencoder(Path(run_dir).expanduser(), checkpoint, "cpu")
    except (MedGenError, DataError) as e:
        raise FeatureError(f"--features {spec!r}: {' '.join(str(e).split())}") from None
    info = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    protocol.update(
        architecture=f"{info.get('kind', 'autoencoder')} encoder, {net.spatial_dims}D, "
        f"{net.in_channels} -> {net.latent_channels} channels, downsample {net.downsample}",
        dim=2 * int(net.latent_channels),
        weights=str(info["checkpoint"]), weights_sha256=info["sha256"],
        run_dir=str(info["run_dir"]), checkpoint=checkpoint, step=info.get("step"),
        input="samples as they are (the autoencoder's data range), no resizing; features: the "
        "deterministic latent's per-channel spatial mean, then its per-channel spatial std",
    )  # fmt: skip
    return PooledLatent(net, f"--features {spec!r}").eval()


class Extractor:
    """A feature extractor and its recorded protocol."""

    def __init__(self, spec: str, max_slices: int = 16, batch_size: int = 16):
        self.spec = spec
        kind, sep, arg = spec.partition(":")
        if not sep or not arg:
            raise FeatureError(
                f"--features {spec!r}: expected medicalnet:PATH, resnet2d:PATH, "
                "autoencoder:RUN_DIR[:CHECKPOINT] or random:SEED"
            )
        self.kind, self.max_slices, self.batch_size = kind, max_slices, batch_size
        self.protocol: dict = {"extractor": kind, "spec": spec}
        if kind == "random":
            try:
                self.seed = int(arg)
            except ValueError:
                raise FeatureError(f"--features {spec!r}: random:SEED needs an integer") from None
            self.protocol.update(
                weights=None, weights_sha256=None, seed=self.seed, dim=RANDOM_DIM,
                input="all image channels as they are (samples in [-1, 1]); no resizing",
                note="random weights: for tests and demos, not comparable with papers",
            )  # fmt: skip
            self.model = None
        elif kind in ("medicalnet", "resnet2d"):
            path = Path(arg).expanduser()
            sd = _state_dict(path)
            if kind == "medicalnet":
                why = {}
                for depth in (10, 18, 50):
                    model = medicalnet_model(depth)
                    why[depth] = _load(model, sd)
                    if why[depth][1] is None:
                        break
                else:
                    near = min(why, key=lambda k: why[k][0])
                    raise FeatureError(
                        f"{path}: these weights are not a MedicalNet resnet10/18/50 (MONAI "
                        f"layout, no head): nearest, resnet{near}: {why[near][1]}"
                    )
                self.protocol.update(architecture=f"monai resnet{depth} 3D (MedicalNet)",
                                     dim=2048 if depth == 50 else 512,
                                     input="each channel a z-scored grayscale volume, features "
                                     "concatenated; no resizing; global average pooling")  # fmt: skip
            else:
                model = resnet2d_model()
                why = _load(model, sd)[1]
                if why is not None:
                    raise FeatureError(
                        f"{path}: these weights are not a 2D ResNet-50 (MONAI layout, 3 input "
                        f"channels, no head): {why}"
                    )
                self.protocol.update(architecture="monai resnet50 2D", dim=2048,
                                     input="[-1, 1] -> [0, 1], ImageNet mean/std, grayscale "
                                     "(channel mean) x3, bilinear resize to 224x224; volumes: "
                                     "2.5D slices on XY, YZ, ZX")  # fmt: skip
            self.model = model.eval()
            self.protocol.update(weights=str(path), weights_sha256=sha256(path))
        elif kind == "autoencoder":
            self.model = _autoencoder(spec, arg, self.protocol)
        else:
            raise FeatureError(f"--features {spec!r}: unknown extractor {kind!r}")

    @torch.no_grad()
    def _batched(self, model, x: torch.Tensor) -> np.ndarray:
        outs = [model(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs).double().numpy()

    def _prep2d(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.mean(1, keepdim=True) + 1) / 2
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return (x.expand(-1, 3, -1, -1) - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def slices(self, n: int) -> np.ndarray:
        """Evenly spaced slice indices (at most ``max_slices``) of an axis of length n."""
        return np.unique(np.linspace(0, n - 1, min(n, self.max_slices)).round().astype(int))

    def rows_per_sample(self, shape) -> int:
        """Feature rows per sample of (C, *spatial) images (the fewest over 2.5D planes)."""
        if self.kind == "resnet2d" and len(shape) == 4:
            return min(len(self.slices(n)) for n in shape[1:])
        return 1

    def check_sizes(self, n_gen: int, n_ref: int, shape) -> None:
        """Raise before extracting when FID cannot have a full-rank covariance."""
        from medgen.train.evaluation.distribution import check_fid_samples

        rows = self.rows_per_sample(shape)
        check_fid_samples(n_gen * rows, self.protocol["dim"], f"{n_gen} generated samples")
        check_fid_samples(n_ref * rows, self.protocol["dim"], f"{n_ref} reference samples")

    def extract(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Features of (N, C, *spatial) images: plane -> (N, S, d)."""
        x = torch.as_tensor(np.asarray(images, np.float32))
        if x.ndim not in (4, 5):
            raise FeatureError(f"expected (N, C, H, W) or (N, C, D, H, W), got {list(x.shape)}")
        n, c = x.shape[:2]
        dims = x.ndim - 2
        if self.kind == "autoencoder":
            try:
                return {f"{dims}d": self._batched(self.model, self.model.check(x))[:, None]}
            except ValueError as e:  # a size the encoder cannot take
                raise FeatureError(f"{self.model.spec}: {e}") from None
        if self.kind == "random":
            model = RandomConv(c, dims, self.seed).eval()
            return {f"{dims}d": self._batched(model, x)[:, None]}
        if self.kind == "medicalnet":
            if dims != 3:
                raise FeatureError("medicalnet features are 3D; these samples are 2D images")
            mu = x.flatten(2).mean(-1)[..., None, None, None]
            sd = x.flatten(2).std(-1).clamp_min(1e-6)[..., None, None, None]
            z = ((x - mu) / sd).reshape(n * c, 1, *x.shape[2:])
            return {"3d": self._batched(self.model, z).reshape(n, 1, -1)}
        if dims == 2:
            return {"2d": self._batched(self.model, self._prep2d(x))[:, None]}
        self.protocol["planes"] = list(PLANES_25D)
        self.protocol["slices_per_plane"] = f"up to {self.max_slices}, evenly spaced"
        out = {}
        for plane, axis in PLANES_25D.items():
            idx = self.slices(x.shape[2 + axis])
            sl = x.index_select(2 + axis, torch.as_tensor(idx)).movedim(2 + axis, 1)
            flat = sl.reshape(n * len(idx), c, *sl.shape[3:])
            out[plane] = self._batched(self.model, self._prep2d(flat)).reshape(n, len(idx), -1)
        return out
