"""One shared test class every denoising network passes: ConditionedUNet, DiT, HDiT and U-ViT,
each in 2D and 3D, with each kind of conditioning (z-bin x class tokens, mode + FiLM size
bins, a concatenated prior, a cross-attention context).

Properties: output shape; exactly zero output at initialisation where the design says so
(DiT / HDiT: adaLN-Zero's zero final layer; MONAI's UNet: its zero output conv; U-ViT has no
such rule); after perturbing every weight, each conditioning and the time change the output of
the sample they were changed for and of no other; a bfloat16 network stays finite and keeps
float32 time (t = 750 and 752, equal in bfloat16, still differ); deterministic mode gives
bitwise-equal outputs and gradients; a state-dict round trip gives the same outputs; gradient
checkpointing gives the same gradients and does recompute (also for a ControlNet branch over a
frozen UNet); bad input is a ValueError naming the mismatch.
Plus a tiny real training per network on MNI152 slices and a ``torch.compile`` smoke test.
"""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medgen.models import DiT, HDiT, Network, RectifiedFlow, UViT
from medgen.models.conditioning import Conditioning
from medgen.models.networks.unet import ConditionedUNet

NETWORKS = ("unet", "dit", "hdit", "uvit")
CONDITIONINGS = ("tokens", "mode_film", "prior", "context")
ZERO_AT_INIT = {"unet": True, "dit": True, "hdit": True, "uvit": False}
TRANSFORMERS = ("dit", "hdit", "uvit")
B, C, SIZE, CTX = 2, 2, 8, 8


def build(kind: str, spatial_dims: int, conditioning: str | None = None, **extra):
    """A tiny network of ``kind`` with one kind of conditioning."""
    cond = {
        None: {},
        "tokens": dict(num_tokens=4, null_token=True),
        "mode_film": dict(num_modes=3, size_bins_dim=4),
        "prior": dict(prior_channels=1, prior_modes="linear"),
        "context": dict(cross_attention_dim=CTX),
    }[conditioning]
    if kind == "unet":
        return ConditionedUNet(spatial_dims, C, C, channels=(16, 32), attention_levels=(False, True),
                               norm_num_groups=8, num_head_channels=16, **cond, **extra)  # fmt: skip
    size = dict(patch_size=2, hidden_size=32, num_heads=2, **cond, **extra)
    if kind == "dit":
        return DiT(spatial_dims, C, depth=2, **size)
    if kind == "hdit":
        return HDiT(spatial_dims, C, level_depths=(1, 1, 1), **size)
    return UViT(spatial_dims, C, depth=3, **size)


def inputs(spatial_dims: int, conditioning: str | None, seed: int = 0):
    """(x, t, Conditioning) for a batch of B."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, C) + (SIZE,) * spatial_dims
    x = torch.randn(shape, generator=g)
    t = torch.tensor([17.0, 604.0])
    cond = {
        None: Conditioning(),
        "tokens": Conditioning(token=torch.tensor([0, 3])),
        "mode_film": Conditioning(mode=torch.tensor([0, 2]), size_bins=torch.rand(B, 4, generator=g)),
        "prior": Conditioning(priors=[torch.rand((B, 1) + (SIZE // 2,) * spatial_dims, generator=g)]),
        "context": Conditioning(context=torch.randn(B, 3, CTX, generator=g)),
    }[conditioning]  # fmt: skip
    return x, t, cond


def changed(cond: Conditioning, conditioning: str) -> list[Conditioning]:
    """Copies of ``cond`` with sample 0's value of each field changed."""
    out = []
    if conditioning == "tokens":
        out.append(Conditioning(token=torch.tensor([2, 3])))
        out.append(Conditioning(token=torch.tensor([4, 3])))  # the null row
    elif conditioning == "mode_film":
        out.append(Conditioning(mode=torch.tensor([1, 2]), size_bins=cond.size_bins))
        bins = cond.size_bins.clone()
        bins[0] += 1.0
        out.append(Conditioning(mode=cond.mode, size_bins=bins))
    elif conditioning == "prior":
        prior = cond.priors[0].clone()
        prior[0] = 1 - prior[0]
        out.append(Conditioning(priors=[prior]))
    else:
        ctx = cond.context.clone()
        ctx[0] = -ctx[0]
        out.append(Conditioning(context=ctx))
    return out


def perturb(net, seed: int = 1, std: float = 0.05):
    """Add noise to every weight, so zero-initialised layers pass their inputs on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * std)
    return net


def to_dtype(cond: Conditioning, dtype) -> Conditioning:
    return Conditioning(
        token=cond.token,
        mode=cond.mode,
        size_bins=None if cond.size_bins is None else cond.size_bins.to(dtype),
        priors=None if cond.priors is None else [p.to(dtype) for p in cond.priors],
        context=None if cond.context is None else cond.context.to(dtype),
    )


CASES = [
    pytest.param(kind, sd, c, id=f"{kind}-{sd}d-{c}")
    for kind in NETWORKS
    for sd in (2, 3)
    for c in CONDITIONINGS
]


@pytest.fixture(autouse=True)
def _seeded_one_thread():
    # tiny ops gain nothing from threads; on a shared machine OpenMP spin-waits slow them down
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


class TestEveryNetwork:
    """The shared contract (see the module docstring)."""

    @pytest.mark.parametrize(("kind", "spatial_dims", "conditioning"), CASES)
    def test_shape_zero_init_and_per_sample_conditioning(self, kind, spatial_dims, conditioning):
        net = build(kind, spatial_dims, conditioning)
        assert isinstance(net, Network)
        x, t, cond = inputs(spatial_dims, conditioning)
        with torch.no_grad():
            out = net(x, t, cond)
            assert out.shape == x.shape and out.dtype == x.dtype
            if ZERO_AT_INIT[kind]:
                assert torch.equal(out, torch.zeros_like(out))
            perturb(net)
            ref = net(x, t, cond)
            assert ref.abs().max() > 1e-3
            for other in changed(cond, conditioning):
                y = net(x, t, other)
                assert not torch.allclose(y[0], ref[0], atol=1e-6), "sample 0 unchanged"
                torch.testing.assert_close(y[1], ref[1])  # and only sample 0
            y = net(x, torch.tensor([300.0, 604.0]), cond)
            assert not torch.allclose(y[0], ref[0], atol=1e-6)
            torch.testing.assert_close(y[1], ref[1])

    @pytest.mark.parametrize(("kind", "spatial_dims", "conditioning"), CASES)
    def test_bfloat16_finite_with_float32_time(self, kind, spatial_dims, conditioning):
        net = perturb(build(kind, spatial_dims, conditioning)).to(torch.bfloat16)
        x, _, cond = inputs(spatial_dims, conditioning)
        x, cond = x.to(torch.bfloat16), to_dtype(cond, torch.bfloat16)
        assert torch.tensor(750.0).bfloat16() == torch.tensor(752.0).bfloat16()
        with torch.no_grad():
            a = net(x, torch.tensor([750.0, 750.0]), cond)
            b = net(x, torch.tensor([752.0, 752.0]), cond)
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()
        assert not torch.equal(a, b)  # the time never passed through bfloat16

    @pytest.mark.parametrize(("kind", "spatial_dims", "conditioning"), CASES)
    def test_deterministic_and_state_dict_round_trip(self, kind, spatial_dims, conditioning):
        net = perturb(build(kind, spatial_dims, conditioning))
        x, t, cond = inputs(spatial_dims, conditioning)

        def run():
            net.zero_grad()
            out = net(x, t, cond)
            (out**2).mean().backward()
            return out.detach(), [p.grad.clone() for p in net.parameters()]

        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            out1, g1 = run()
            out2, g2 = run()
        finally:
            torch.use_deterministic_algorithms(was)
        assert torch.equal(out1, out2)
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))

        torch.manual_seed(123)
        fresh = build(kind, spatial_dims, conditioning)
        fresh.load_state_dict(net.state_dict())
        with torch.no_grad():
            assert torch.equal(fresh(x, t, cond), out1)

    @pytest.mark.parametrize(("kind", "spatial_dims", "conditioning"), CASES)
    def test_gradient_checkpointing_gives_the_same_gradients(
        self, kind, spatial_dims, conditioning
    ):
        net = perturb(build(kind, spatial_dims, conditioning))
        x, t, cond = inputs(spatial_dims, conditioning)
        assert same_gradients_with_recompute(net, lambda: net(x, t, cond), [net])


def forward_calls(module: torch.nn.Module) -> tuple[list[int], list]:
    """A counter of forward calls of every submodule of ``module`` and the hook handles."""
    count = [0]

    def hook(*_):
        count[0] += 1

    return count, [m.register_forward_hook(hook) for m in module.modules()]


def same_gradients_with_recompute(net, run, flagged) -> bool:
    """Gradients of ``net``'s trainable parameters from ``run()`` with and without
    ``gradient_checkpointing`` on every module in ``flagged`` agree, and with it the backward
    pass really recomputes forwards (more forward calls), so a flag that does nothing fails."""
    grads, calls = [], []
    for flag in (False, True):
        for m in flagged:
            m.gradient_checkpointing = flag
        net.zero_grad()
        count, handles = forward_calls(net)
        (run() ** 2).mean().backward()
        for h in handles:
            h.remove()
        calls.append(count[0])
        grads.append([p.grad.clone() for p in net.parameters() if p.requires_grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert calls[1] > calls[0], f"checkpointing recomputed nothing ({calls} forward calls)"
    return True


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradient_checkpointing_of_a_controlnet_branch_over_a_frozen_base(spatial_dims):
    """The branch's gradients through the frozen, checkpointed base are unchanged; the branch
    follows the base's flag unless told otherwise."""
    from medgen.models.networks.controlnet import ControlBranch, ControlledUNet

    base = perturb(build("unet", spatial_dims, "tokens")).requires_grad_(False)
    assert ControlBranch(base, 1).gradient_checkpointing is False
    base.gradient_checkpointing = True
    assert ControlBranch(base, 1).gradient_checkpointing is True
    assert ControlBranch(base, 1, gradient_checkpointing=False).gradient_checkpointing is False
    branch = perturb(ControlBranch(base, 1))
    pair = ControlledUNet(base, branch)
    x, t, cond = inputs(spatial_dims, "tokens")
    control = torch.randn((B, 1) + (SIZE,) * spatial_dims)
    cond = dataclasses.replace(cond, control=control)
    assert same_gradients_with_recompute(pair, lambda: pair(x, t, cond), [base, branch])


@pytest.mark.parametrize("kind", TRANSFORMERS)
def test_bad_input_is_a_value_error_naming_the_mismatch(kind):
    net = build(kind, 2, "tokens")
    name = type(net).__name__
    x, t, cond = inputs(2, "tokens")
    with pytest.raises(ValueError, match=rf"{name} was built for 2D inputs.*5-dim"):
        net(torch.randn(B, C, SIZE, SIZE, SIZE), t, cond)
    with pytest.raises(ValueError, match=r"expects 2 input channels .*got 3"):
        net(torch.randn(B, 3, SIZE, SIZE), t, cond)
    multiple = net.input_multiple
    with pytest.raises(ValueError, match=rf"divisible by {multiple} .*\(8, {multiple * 3 + 1}\)"):
        net(torch.randn(B, C, SIZE, multiple * 3 + 1), t, cond)
    with pytest.raises(ValueError, match=rf"{name} was built with token but got none"):
        net(x, t)
    with pytest.raises(ValueError, match=rf"{name} got context but was built without it"):
        net(x, t, Conditioning(token=cond.token, context=torch.zeros(B, 1, CTX)))
    with pytest.raises(ValueError, match=r"token out of range \[0, 5\)"):
        net(x, t, torch.tensor([0, 5]))
    ctx_net = build(kind, 2, "context")
    with pytest.raises(ValueError, match=rf"context must be \(B=2, M, {CTX}\)"):
        ctx_net(x, t, Conditioning(context=torch.zeros(B, 1, CTX + 1)))


@pytest.mark.parametrize("kind", TRANSFORMERS)
def test_every_conditioning_field_not_built_for_is_refused(kind):
    """Each field of the record (including any added later) is checked, not a fixed list."""
    net = build(kind, 2, "tokens")
    x, t, cond = inputs(2, "tokens")
    for field in dataclasses.fields(Conditioning):
        if field.name == "token":
            continue
        value = [torch.zeros(B, 1, SIZE, SIZE)] if field.name == "priors" else torch.zeros(B, 1)
        bad = dataclasses.replace(cond, **{field.name: value})
        with pytest.raises(ValueError, match=f"got {field.name} but was built without it"):
            net(x, t, bad)


def test_constructor_rules():
    with pytest.raises(ValueError, match="depth must be odd"):
        UViT(2, 1, depth=4, hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match="level_depths must have odd length"):
        HDiT(2, 1, level_depths=(1, 1), hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match="level_widths: 5 level_depths need 3 widths"):
        HDiT(2, 1, level_widths=(32, 64), hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        DiT(2, 1, hidden_size=32, num_heads=5)
    with pytest.raises(ValueError, match="variant must be one of S, B, L, XL"):
        DiT.variant("XXL", 2, 1)


# -- a tiny real training per network --------------------------------------------------------

MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _mni152_slices(n: int = 8, size: int = 16) -> torch.Tensor:
    nib = pytest.importorskip("nibabel")
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nilearn (which ships the MNI152 template) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / MNI_T1
    vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    zs = np.linspace(60, 130, n).round().astype(int)
    sl = torch.from_numpy(np.ascontiguousarray(vol[:, :, zs].transpose(2, 1, 0)))[:, None]
    sl = F.adaptive_avg_pool2d(sl, size)
    sl = (sl / torch.quantile(sl, 0.99)).clamp(0, 1)
    return sl * 2 - 1


@pytest.mark.parametrize("kind", NETWORKS)
def test_a_short_training_on_mni152_slices_lowers_the_validation_loss(kind):
    """40 Adam steps of rectified flow on 8 slices (16x16) with z-bin tokens: the loss on a
    fixed validation draw (same slices, fixed noise and times) falls by a third."""
    data = _mni152_slices()
    tokens = torch.arange(8) // 2
    if kind == "unet":
        net = ConditionedUNet(2, 1, 1, num_tokens=4, channels=(16, 32),
                              attention_levels=(False, False), norm_num_groups=8)  # fmt: skip
    else:
        net = {"dit": DiT, "hdit": HDiT, "uvit": UViT}[kind](
            2, 1, num_tokens=4, patch_size=2, hidden_size=64, num_heads=4,
            **({"depth": 3} if kind != "hdit" else {"level_depths": (1, 1, 1)}),
        )  # fmt: skip
    flow = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    val_noise = torch.randn(data.shape, generator=g)
    val_t = torch.linspace(0.05, 0.95, 8)

    def val_loss():
        with torch.no_grad():
            x_t = flow.add_noise(data, val_noise, val_t)
            out = net(x_t, flow.model_time(val_t), tokens)
            return F.mse_loss(out, flow.training_target(data, val_noise, val_t)).item()

    start = val_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(40):
        noise = torch.randn(data.shape, generator=g)
        t = torch.rand(8, generator=g)
        out = net(flow.add_noise(data, noise, t), flow.model_time(t), tokens)
        loss = F.mse_loss(out, flow.training_target(data, noise, t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = val_loss()
    assert end < 0.67 * start, (kind, start, end)


@pytest.mark.slow
# torch's own import of torch.jit inside dynamo warns about its deprecation (not our code)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_smoke():
    """The compiled DiT gives the eager output (one tiny network; compiling takes ~30-75 s on
    a 2-core CPU, hence slow)."""
    net = perturb(build("dit", 2, "tokens")).eval()
    x, t, cond = inputs(2, "tokens")
    compiled = torch.compile(net)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, cond), net(x, t, cond), rtol=1e-4, atol=1e-5)
