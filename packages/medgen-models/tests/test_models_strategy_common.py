"""One shared test class that every schedule x strategy x sampler passes (in the manner of
diffusers' ``SchedulerCommonTest``): interface, shapes (2D and 3D), dtypes, YAML config round
trip giving identical steps, and device handling."""

import types

import pytest
import torch

import medgen.cuda
from medgen.models import (
    DDPM,
    RectifiedFlow,
    Strategy,
    inference_timesteps,
    samplers,
    schedules,
    strategy_from_config,
)

yaml = pytest.importorskip("yaml")

SCHEDULES = {
    "linear": lambda: schedules.linear(1000),
    "scaled_linear": lambda: schedules.scaled_linear(1000),
    "cosine": lambda: schedules.cosine(1000),
    "sigmoid": lambda: schedules.sigmoid(1000),
    "gamma": lambda: schedules.gamma_rebalanced(1000, gamma=2.0),
    "cosine_zsnr": lambda: schedules.make("cosine", 1000, zero_terminal_snr=True),
}
FLOWS = {
    "uniform_s1": lambda: RectifiedFlow(shift=1.0, t_sampling="uniform"),
    "logitnormal_s3": lambda: RectifiedFlow(shift=3.0, t_sampling="logit_normal"),
}
CASES = [
    pytest.param((lambda f=f, p=p: DDPM(f(), p)), sampler, id=f"{name}-{p}-{sampler}")
    for name, f in SCHEDULES.items()
    for p in ("epsilon", "v", "sample")
    if not (name.endswith("zsnr") and p == "epsilon")  # eps is undefined at SNR 0 (Lin et al.)
    for sampler in ("ddim", "ddpm")
] + [
    pytest.param(f, sampler, id=f"rflow_{name}-{sampler}")
    for name, f in FLOWS.items()
    for sampler in ("euler", "heun")
]
SHAPES = {"2d": (2, 3, 8, 8), "3d": (2, 2, 4, 4, 4)}


def toy_model(x, t, cond):
    """Finite in every dtype; depends on x, t (either time convention) and the tokens."""
    tt = (t.double() / 1000).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    c = 0.0 if cond is None else 0.01 * cond.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.9 * torch.tanh(0.5 * x) - 0.1 * tt + c


def run(strategy, sampler, x_T, steps=4, **kw):
    return samplers.SAMPLERS[sampler](
        toy_model, strategy, x_T, steps, generator=torch.Generator().manual_seed(0), **kw
    )


@pytest.mark.parametrize(("make", "sampler"), CASES)
class TestStrategySamplerCommon:
    @pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
    def test_training_interface_and_shapes(self, make, sampler, shape):
        strategy = make()
        assert isinstance(strategy, Strategy)
        g = torch.Generator().manual_seed(0)
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = strategy.sample_timesteps(shape[0], g)
        assert t.shape == (shape[0],)
        x_t = strategy.add_noise(x0, noise, t)
        target = strategy.training_target(x0, noise, t)
        assert x_t.shape == target.shape == shape
        x0_hat, eps_hat = strategy.predict_x0_eps(x_t, target, t)
        assert x0_hat.shape == eps_hat.shape == shape
        torch.testing.assert_close(strategy.predict_x0(x_t, target, t), x0_hat)
        assert strategy.snr(t, x0).shape == (shape[0],) + (1,) * (len(shape) - 1)

    def test_sampling_shapes_2d_3d_and_callback(self, make, sampler):
        for shape in SHAPES.values():
            seen = []
            x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            out = run(make(), sampler, x_T, cond=torch.tensor([1, 2]), callback=seen.append)
            assert out.shape == x_T.shape and out.dtype == x_T.dtype
            assert [d["i"] for d in seen] == [0, 1, 2, 3]
            assert all(d["x"].shape == d["x0"].shape == x_T.shape for d in seen)
            assert torch.equal(seen[-1]["x"], out)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_dtype_kept_and_finite(self, make, sampler, dtype):
        strategy = make()
        before = {k: v.clone() for k, v in vars(strategy).items() if isinstance(v, torch.Tensor)}
        x_T = torch.randn(SHAPES["2d"], generator=torch.Generator().manual_seed(2)).to(dtype)
        out = run(strategy, sampler, x_T)
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        # the network's time is never rounded through the sample's dtype (diffusers #9405)
        t_dtypes = set()
        samplers.SAMPLERS[sampler](lambda x, t, c: t_dtypes.add(t.dtype) or toy_model(x, t, c),
                                   strategy, x_T, 2, generator=torch.Generator())  # fmt: skip
        assert t_dtypes == {torch.float32}
        x0 = torch.rand(SHAPES["2d"]).to(dtype)
        t = strategy.sample_timesteps(2)
        assert strategy.add_noise(x0, torch.randn_like(x0), t).dtype == dtype
        for k, v in before.items():  # tables untouched by low-precision calls
            assert getattr(strategy, k).dtype == v.dtype and torch.equal(getattr(strategy, k), v)

    def test_samplers_pass_model_time_to_the_network(self, make, sampler):
        """The network sees ``strategy.model_time(t)`` on the sampler's own grid, float32."""
        strategy = make()
        seen = []
        x_T = torch.randn(SHAPES["2d"], generator=torch.Generator().manual_seed(7))
        samplers.SAMPLERS[sampler](lambda x, t, c: seen.append(t) or toy_model(x, t, c),
                                   strategy, x_T, 4, generator=torch.Generator())  # fmt: skip
        if strategy.kind == "ddpm":
            grid = inference_timesteps(strategy.num_train_timesteps, 4)
        else:
            grid = strategy.timesteps(4)[:-1]  # the model is never called at t = 0
        expected = strategy.model_time(grid)
        assert expected.dtype == torch.float32
        assert all(t.dtype == torch.float32 and t.shape == (x_T.shape[0],) for t in seen)
        firsts = torch.stack([t[0] for t in seen])
        assert set(firsts.tolist()) == set(expected.tolist())
        if strategy.kind == "ddpm":  # the integers themselves, exactly
            assert torch.equal(firsts, grid.to(torch.float32))

    def test_yaml_config_round_trip_gives_identical_steps(self, make, sampler):
        strategy = make()
        again = strategy_from_config(yaml.safe_load(yaml.safe_dump(strategy.config())))
        assert type(again) is type(strategy) and again.config() == strategy.config()
        x_T = torch.randn(SHAPES["2d"], generator=torch.Generator().manual_seed(3))
        assert torch.equal(run(strategy, sampler, x_T), run(again, sampler, x_T))  # + determinism
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(strategy.sample_timesteps(8, g1), again.sample_timesteps(8, g2))

    @pytest.mark.parametrize(
        "device",
        [
            "cpu",
            pytest.param(
                "cuda",
                marks=[
                    pytest.mark.cuda,
                    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
                ],
            ),
        ],
    )
    def test_device_handling(self, make, sampler, device):
        strategy = make()
        x_T = torch.randn(SHAPES["2d"], generator=torch.Generator().manual_seed(6))
        before = medgen.cuda.backend_counts()
        out = samplers.SAMPLERS[sampler](toy_model, strategy, x_T.to(device), 4,
                                         generator=torch.Generator(device).manual_seed(0))  # fmt: skip
        assert out.device.type == device
        if device == "cuda" or medgen.cuda.extension_available():
            # every update ran medgen.cuda's kernels for this device (CUDA on the GPU), none the
            # PyTorch fallback: a GPU run on the fallback would otherwise pass unnoticed
            counts = medgen.cuda.backend_counts()
            assert counts[device] > before[device] and counts["reference"] == before["reference"]
        ref = run(strategy, sampler, x_T)
        if device == "cpu":
            assert torch.equal(out, ref)
        elif sampler in ("ddim", "euler", "heun"):  # deterministic: same numbers on the GPU
            torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=1e-5)
        t = strategy.sample_timesteps(2, device=device)
        assert t.device.type == device
        x0 = torch.randn(SHAPES["2d"], device=device)
        assert strategy.add_noise(x0, torch.randn_like(x0), t).device.type == device


def test_model_time_is_part_of_the_protocol():
    """runtime_checkable isinstance: both strategies qualify; a strategy without the network-time
    hook does not."""
    ddpm = DDPM(schedules.linear(10))
    assert isinstance(ddpm, Strategy) and isinstance(RectifiedFlow(), Strategy)
    members = ("kind", "prediction", "sample_timesteps", "add_noise", "training_target",
               "predict_x0", "predict_x0_eps", "snr", "config")  # fmt: skip
    partial = types.SimpleNamespace(**{name: getattr(ddpm, name) for name in members})
    assert not isinstance(partial, Strategy)
    partial.model_time = ddpm.model_time
    assert isinstance(partial, Strategy)
