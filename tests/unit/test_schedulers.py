"""Golden tests: our schedulers against diffusers' own (torch, float32) schedulers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from t2vserve.schedulers import FlowEulerScheduler, FlowUniPCScheduler, make_scheduler  # noqa: E402

STEPS = [1, 2, 3, 4, 8, 20, 50]
SHAPE = (1, 48, 5, 8, 8)
# Final-sample tolerance: diffusers does its scalar maths in float32, we do it in float64.
ATOL_REL = 1e-5


def diffusers_scheduler(name, solver_order=2):
    if name == "euler":
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    # Exactly the scheduler_config.json shipped with Wan2.2-TI2V-5B-Diffusers.
    return diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
        solver_order=solver_order, solver_type="bh2", predict_x0=True, lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing="linspace", disable_corrector=[], thresholding=False,
    )


def ours(name, solver_order=2):
    if name == "euler":
        return FlowEulerScheduler(shift=5.0)
    return FlowUniPCScheduler(shift=5.0, solver_order=solver_order)


def initial_sample(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


_BIAS = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)


def fake_model(x, t):
    """Deterministic stand-in for the transformer: depends on the sample and the timestep."""
    return (0.3 * x - 0.1 * np.sin(float(t) / 100.0) + 0.5 * _BIAS * (float(t) / 1000.0)).astype(np.float32)


def run_ours(sched, steps, x):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(fake_model(x, t), t, x)
    return x


def run_diffusers(sched, steps, x):
    sched.set_timesteps(steps)
    xt = torch.from_numpy(x)
    for t in sched.timesteps:
        v = torch.from_numpy(fake_model(xt.numpy(), t.item()))
        xt = sched.step(v, t, xt, return_dict=False)[0]
    return xt.numpy()


@pytest.mark.parametrize("name", ["unipc", "euler"])
@pytest.mark.parametrize("steps", STEPS)
def test_schedule_matches_diffusers(name, steps):
    ref, mine = diffusers_scheduler(name), ours(name)
    ref.set_timesteps(steps)
    mine.set_timesteps(steps)
    ref_t, ref_s = ref.timesteps.numpy(), ref.sigmas.numpy()
    assert mine.timesteps.dtype == ref_t.dtype  # int64 for UniPC, float32 for Euler
    assert mine.timesteps.shape == (steps,) and mine.sigmas.shape == (steps + 1,)
    np.testing.assert_allclose(mine.timesteps, ref_t, rtol=1e-6, atol=0)
    np.testing.assert_allclose(mine.sigmas, ref_s, rtol=1e-6, atol=0)
    assert mine.sigmas[-1] == 0.0


@pytest.mark.parametrize("name", ["unipc", "euler"])
@pytest.mark.parametrize("steps", STEPS)
def test_full_loop_matches_diffusers(name, steps):
    x = initial_sample()
    expected = run_diffusers(diffusers_scheduler(name), steps, x)
    got = run_ours(ours(name), steps, x)
    assert got.dtype == np.float32 and got.shape == SHAPE
    err = np.abs(got.astype(np.float64) - expected).max()
    assert err <= ATOL_REL * max(1.0, np.abs(expected).max()), f"max abs diff {err:.3e}"


@pytest.mark.parametrize("solver_order", [1, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 8, 20])
def test_other_unipc_orders_match_diffusers(solver_order, steps):
    x = initial_sample()
    expected = run_diffusers(diffusers_scheduler("unipc", solver_order), steps, x)
    got = run_ours(ours("unipc", solver_order), steps, x)
    err = np.abs(got.astype(np.float64) - expected).max()
    assert err <= ATOL_REL * max(1.0, np.abs(expected).max()), f"max abs diff {err:.3e}"


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_last_step_lands_on_x0_estimate(name):
    # The final sigma is 0, so with lower-order-final the last step returns x - sigma * v.
    sched = make_scheduler(name)
    sched.set_timesteps(1)
    x = initial_sample()
    v = fake_model(x, sched.timesteps[0])
    out = sched.step(v, sched.timesteps[0], x)
    np.testing.assert_allclose(out, x - np.float64(sched.sigmas[0]) * v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_deterministic_and_independent(name):
    x = initial_sample(3)
    a = run_ours(make_scheduler(name), 20, x)
    b = run_ours(make_scheduler(name), 20, x)
    assert np.array_equal(a, b)

    # Interleaving two requests with different step counts must not change either result.
    s1, s2 = make_scheduler(name), make_scheduler(name)
    s1.set_timesteps(20)
    s2.set_timesteps(8)
    x1, x2 = x.copy(), initial_sample(4)
    for i in range(20):
        x1 = s1.step(fake_model(x1, s1.timesteps[i]), s1.timesteps[i], x1)
        if i < 8:
            x2 = s2.step(fake_model(x2, s2.timesteps[i]), s2.timesteps[i], x2)
    assert np.array_equal(x1, a)
    assert np.array_equal(x2, run_ours(make_scheduler(name), 8, initial_sample(4)))

    # set_timesteps resets all state, so a scheduler object can be reused.
    reused = make_scheduler(name)
    run_ours(reused, 3, initial_sample(5))
    assert np.array_equal(run_ours(reused, 20, x), a)


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_inputs_not_mutated(name):
    sched = make_scheduler(name)
    sched.set_timesteps(4)
    x = initial_sample()
    for t in sched.timesteps:
        v = fake_model(x, t)
        x_before, v_before = x.copy(), v.copy()
        out = sched.step(v, t, x)
        assert np.array_equal(x, x_before) and np.array_equal(v, v_before)
        assert out is not x and out.dtype == np.float32
        x = out


@pytest.mark.parametrize("name", ["unipc", "euler"])
@pytest.mark.parametrize("bad", [0, -1, 1001, 2.0, "4", True, None])
def test_invalid_steps(name, bad):
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, 1000\]"):
        make_scheduler(name).set_timesteps(bad)


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_step_misuse_raises(name):
    sched = make_scheduler(name)
    x = initial_sample()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, 999, x)
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="expects timestep"):
        sched.step(x, sched.timesteps[1], x)  # skipping a step
    with pytest.raises(ValueError, match="shape"):
        sched.step(x[:, :4], sched.timesteps[0], x)
    for t in sched.timesteps:
        x = sched.step(x, t, x)
    with pytest.raises(RuntimeError, match="steps are done"):
        sched.step(x, sched.timesteps[-1], x)


def test_make_scheduler():
    assert isinstance(make_scheduler("unipc"), FlowUniPCScheduler)
    assert isinstance(make_scheduler("euler", shift=3.0), FlowEulerScheduler)
    assert make_scheduler("euler", shift=3.0).shift == 3.0
    with pytest.raises(ValueError, match=r"allowed names: unipc, euler"):
        make_scheduler("ddim")


def test_shift_is_applied():
    # Guards against a shift parameter that is silently ignored: compare with diffusers at shift=3.
    mine = make_scheduler("unipc", shift=3.0)
    mine.set_timesteps(8)
    ref = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    ref.set_timesteps(8)
    np.testing.assert_allclose(mine.sigmas, ref.sigmas.numpy(), rtol=1e-6)
    default = make_scheduler("unipc")
    default.set_timesteps(8)
    assert not np.allclose(mine.sigmas, default.sigmas)


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_a_tensor_loop_stays_a_tensor_and_equals_the_array_loop(name):
    # The served loop passes tensors on the DiT's device, the golden tests above numpy arrays:
    # the same float64 element-wise maths, so the same float32 bits.
    x = initial_sample(5)
    expected = run_ours(make_scheduler(name), 8, x)
    sched = make_scheduler(name)
    sched.set_timesteps(8)
    xt = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        v = torch.from_numpy(fake_model(xt.numpy(), t))
        xt = sched.step(v, t, xt)
        assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float32
        assert xt.device == torch.device("cpu")
    assert np.array_equal(xt.numpy(), expected)
    assert not np.array_equal(expected, run_ours(make_scheduler(name), 8, initial_sample(6)))
