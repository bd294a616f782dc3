"""Flow-matching schedulers for the denoising loop, on the latents' own device.

Both follow diffusers' scheduler contract (``set_timesteps`` / ``timesteps`` / ``sigmas`` / ``step``)
and reproduce the schedules of diffusers 0.42.1 exactly as Wan2.2-TI2V-5B-Diffusers configures them,
so that our results can be checked against the reference pipeline. Each request owns one
scheduler object; nothing is shared between objects.

The schedule (timesteps, sigmas, log-SNRs) is a few numpy scalars per step; the per-element
maths runs in torch float64 on the sample's device, so a GPU loop keeps its latents there. Every
element-wise operation is one IEEE-rounded op with a float64 scalar, as numpy's were, so on the
CPU the result is bit-identical to the numpy implementation it replaced. A numpy sample in gives
a numpy array out; a tensor in gives a tensor on its device out.

Convention (rectified flow): x_sigma = (1 - sigma) * x0 + sigma * noise and the model predicts the
velocity v = noise - x0, so x0 = x - sigma * v.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

SCHEDULER_NAMES = ("unipc", "euler")


def _shift(sigmas, shift):
    # Wan's static timestep shift: spends more steps at high noise for shift > 1.
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class _FlowScheduler:
    order = 1  # model evaluations per step, as diffusers reports it for both schedulers

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 5.0):
        if not (isinstance(num_train_timesteps, numbers.Integral) and num_train_timesteps >= 1):
            raise ValueError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}")
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.num_inference_steps: int | None = None
        self.timesteps: np.ndarray | None = None
        self.sigmas: np.ndarray | None = None  # float32, length num_inference_steps + 1, ends at 0
        self.step_index: int | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be an int in [1, {self.num_train_timesteps}], got {n!r}"
            )
        self.num_inference_steps = int(n)
        self.timesteps, self.sigmas = self._schedule(int(n))
        self.step_index = 0
        self._reset_state()

    def _reset_state(self) -> None:
        pass

    def _begin_step(self, timestep, model_output, sample):
        """Checks the call against the schedule; returns the inputs as float64 copies."""
        if self.step_index is None:
            raise RuntimeError("call set_timesteps() before step()")
        if self.step_index >= self.num_inference_steps:
            raise RuntimeError(f"all {self.num_inference_steps} steps are done; call set_timesteps() again")
        expected = float(self.timesteps[self.step_index])
        # Steps are driven by our own counter; a mismatching timestep means the loop is out of sync.
        if abs(float(timestep) - expected) > 1e-3:
            raise ValueError(f"step {self.step_index} expects timestep {expected}, got {float(timestep)}")
        model_output, sample = torch.as_tensor(model_output), torch.as_tensor(sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape "
                             f"{tuple(sample.shape)}")
        # float64 copies on the sample's device: the inputs stay intact
        return (model_output.to(sample.device, torch.float64, copy=True),
                sample.to(torch.float64, copy=True))


def _out(x: torch.Tensor, like) -> torch.Tensor | np.ndarray:
    """float32, as the kind of array the caller passed (numpy stays numpy)."""
    x = x.to(torch.float32)
    return x.numpy() if isinstance(like, np.ndarray) else x


class FlowEulerScheduler(_FlowScheduler):
    """First-order Euler step on the flow ODE, matching FlowMatchEulerDiscreteScheduler(shift=shift).

    With `sigmas` (s_0 > ... > s_{n-1} > 0, then 0) it steps over exactly that list instead,
    as a few-step distilled model is trained to (timestep = sigma * num_train_timesteps)."""

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 5.0,
                 sigmas: tuple[float, ...] | None = None):
        super().__init__(num_train_timesteps, shift)
        self.fixed = None if sigmas is None else np.asarray(sigmas, np.float32)

    def _schedule(self, n):
        if self.fixed is not None:
            if n != len(self.fixed) - 1:
                raise ValueError(f"this schedule has exactly {len(self.fixed) - 1} steps, got {n}")
            sigmas = self.fixed[:-1]
            return sigmas * np.float32(self.num_train_timesteps), self.fixed.copy()
        # diffusers computes its training sigma range in float32 and *already shifted*, then takes a
        # linspace between those ends and shifts again; we follow it step by step, dtypes included.
        f32 = np.float32
        n_train = self.num_train_timesteps
        train = np.linspace(1, n_train, n_train, dtype=f32) / f32(n_train)
        train = f32(self.shift) * train / (f32(1) + f32(self.shift - 1) * train)
        t_max, t_min = (float(s) * n_train for s in (train[-1], train[0]))
        sigmas = _shift(np.linspace(t_max, t_min, n) / n_train, self.shift).astype(f32)
        timesteps = sigmas * f32(n_train)  # float32, not rounded
        return timesteps, np.append(sigmas, f32(0))

    def step(self, model_output, timestep, sample):
        v, x = self._begin_step(timestep, model_output, sample)
        i = self.step_index
        dt = float(self.sigmas[i + 1]) - float(self.sigmas[i])
        self.step_index += 1
        return _out(x + dt * v, sample)


class FlowUniPCScheduler(_FlowScheduler):
    """UniPC multistep (B(h) = e^h - 1 "bh2" variant) in data-prediction form, for flow-prediction models.

    Matches diffusers' UniPCMultistepScheduler with use_flow_sigmas=True, predict_x0=True,
    lower_order_final=True, final_sigmas_type="zero" and the corrector enabled at every step.
    Each step first corrects the previous predictor's output using the new model evaluation (UniC),
    then predicts the next sample from up to `solver_order` recent x0 estimates (UniP).
    """

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 5.0, solver_order: int = 2):
        super().__init__(num_train_timesteps, shift)
        if not (isinstance(solver_order, numbers.Integral) and 1 <= solver_order <= 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        self.solver_order = int(solver_order)

    def _schedule(self, n):
        sigmas = _shift(np.linspace(1, 1 / self.num_train_timesteps, n + 1)[:-1], self.shift)
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # keeps alpha = 1 - sigma > 0, so log(alpha) stays finite
        # diffusers truncates (not rounds) the float64 values to int64: sigma 0.999999 -> t = 999.
        timesteps = (sigmas * self.num_train_timesteps).astype(np.int64)
        return timesteps, np.append(sigmas, 0.0).astype(np.float32)

    def _reset_state(self) -> None:
        s = self.sigmas.astype(np.float64)  # from the float32 sigmas, exactly as diffusers sees them
        with np.errstate(divide="ignore"):
            self._lambdas = np.log(1 - s) - np.log(s)  # log-SNR; +inf at the final sigma = 0
        self._x0_history: list[tuple[int, torch.Tensor]] = []  # (sigma index, x0 estimate), newest last
        self._last_sample: torch.Tensor | None = None  # input of the last predictor, for the corrector
        self._last_order = 0

    def _bh_update(self, x, s, t, x0_new=None, order=1):
        """Moves x from sigma index s to t using the x0 history (newest at s); with x0_new (the estimate
        at t) it is the corrector UniC, otherwise the predictor UniP. `order` counts the history used."""
        lam, hist = self._lambdas, self._x0_history
        sigma_s, sigma_t = float(self.sigmas[s]), float(self.sigmas[t])
        alpha_t = 1.0 - sigma_t
        h = float(lam[t] - lam[s])
        h_phi_1 = float(np.expm1(-h))  # = e^{-h} - 1; exactly -1 when sigma_t = 0
        b_h = h_phi_1  # bh2
        m0 = hist[-1][1]
        x_next = (sigma_t / sigma_s) * x - alpha_t * h_phi_1 * m0  # first-order (DDIM-like) step

        # Higher-order terms: divided differences of older x0 estimates (and of x0_new) against m0.
        rks, diffs = [], []
        for idx, m in hist[-order:-1]:  # any order: permuting the points only permutes the weights
            rk = float(lam[idx] - lam[s]) / h
            rks.append(rk)
            diffs.append((m - m0) / rk)
        if x0_new is not None:
            rks.append(1.0)
            diffs.append(x0_new - m0)
        if not diffs:
            return x_next
        if len(diffs) == 1:
            rhos = [0.5]  # diffusers' fixed weight for a single difference (the h -> 0 limit of b_1)
        else:
            # Solve sum_k rho_k r_k^(i-1) = b_i, the B(h) order conditions, where
            # b_i = i! * hh * phi_{i+1}(hh) / B(h) with hh = -h (phi_k: the exponential-integrator phi functions).
            hh, phi_k, fact, b = -h, h_phi_1 / -h - 1, 1, []
            for i in range(1, len(rks) + 1):
                b.append(phi_k * fact / b_h)
                fact *= i + 1
                phi_k = phi_k / hh - 1 / fact
            rhos = np.linalg.solve(np.vander(rks, increasing=True).T, np.array(b))
        return x_next - alpha_t * b_h * sum(float(r) * d for r, d in zip(rhos, diffs))

    def step(self, model_output, timestep, sample):
        v, x = self._begin_step(timestep, model_output, sample)
        i = self.step_index
        x0 = x - float(self.sigmas[i]) * v  # flow prediction -> data prediction

        if self._last_sample is not None:  # UniC: refine the sample we returned last time
            x = self._bh_update(self._last_sample, i - 1, i, x0_new=x0, order=self._last_order)

        self._x0_history = (self._x0_history + [(i, x0)])[-self.solver_order:]
        # Warm up from first order, and drop to lower orders near the end (lower_order_final):
        # the jump to sigma = 0 makes the log-SNR step infinite, where only first order is defined.
        order = min(self.solver_order, self.num_inference_steps - i, len(self._x0_history))
        self._last_sample, self._last_order = x, order
        prev = self._bh_update(x, i, i + 1, order=order)
        self.step_index += 1
        return _out(prev, sample)


def make_scheduler(name: str, shift: float = 5.0,
                   sigmas: tuple[float, ...] | None = None) -> FlowUniPCScheduler | FlowEulerScheduler:
    """A scheduler by name; with `sigmas` (a few-step model's fixed list) Euler over them."""
    if sigmas is not None:
        return FlowEulerScheduler(shift=shift, sigmas=sigmas)
    if name == "unipc":
        return FlowUniPCScheduler(shift=shift)
    if name == "euler":
        return FlowEulerScheduler(shift=shift)
    raise ValueError(f"unknown scheduler {name!r}; allowed names: {', '.join(SCHEDULER_NAMES)}")
