"""Closed-form priors: exact denoisers of simple data distributions, for tests and benchmarks (no weights).

Both follow the prior contract (:class:`~dreamcore.priors.base.Prior`) with x_t = α_t x + σ_t ε, α_t = √ᾱ_t,
σ_t = √(1 − ᾱ_t), and return the *optimal* noise prediction ε*(x_t, t) = E[ε | x_t] of their data:

* :class:`GaussianPrior` — per condition k the data is N(μ_k, s_k² I). The diffused marginal is
  N(α_t μ_k, D_k(t) I) with D_k = α_t² s_k² + σ_t², hence

      ε*_k(x_t, t) = σ_t (x_t − α_t μ_k) / D_k,      x̂_0*(x_t) = μ_k + α_t s_k² (x_t − α_t μ_k) / D_k.

  Every guidance's gradient is then an explicit affine function of x and ε (guidance.md §16.3).
* :class:`ReferenceSetPrior` — a finite set of references r_i with weights w_i (the condition): the diffused data is
  the mixture Σ_i w_i N(α_t r_i, σ_t² I), whose posterior mean is

      x̂_0*(x_t) = Σ_i softmax_i(log w_i − ‖x_t − α_t r_i‖² / (2σ_t²)) r_i,     ε* = (x_t − α_t x̂_0*) / σ_t

  (a memorizing prior: mode-seeking vs. sampling experiments, guidance.md §16.4).

* :class:`JointGaussianPrior` — a multi-view prior (``views_per_sample`` = F): the F views of one object are
  jointly Gaussian, x ~ N(μ, s²[(1 − ρ) I_F + ρ 11ᵀ] ⊗ I) (each element correlated with the same element of the
  other views by ρ). Σ has the eigenvalues λ₁ = s²(1 + (F − 1)ρ) on the views' mean and λ₀ = s²(1 − ρ) on
  deviations from it, so with d = x_t − α_t μ and d̄ its mean over the group's views

      ε*(x_t, t) = σ_t [ d̄ / (α_t² λ₁ + σ_t²) + (d − d̄) / (α_t² λ₀ + σ_t²) ],

  and SDS's expected update at x is α_t σ_t [ δ̄ / (α_t² λ₁ + σ_t²) + (δ − δ̄) / (α_t² λ₀ + σ_t²) ], δ = x − μ:
  zero at μ, and a change of one view pulls the others (ρ > 0) where a 2D prior (ρ = 0) leaves them alone.

Model space is the render itself: :meth:`to_model_space` only permutes the colours ``rgb`` [B, H, W, C] to
[B, C, H, W] (no rescaling), so a test can optimize x directly (g(θ) = θ) by holding ``x.permute(0, 2, 3, 1)`` as
the render. The default schedule is Stable Diffusion's scaled-linear table kept in float64
(:func:`sd_schedule`), so closed forms can be checked to float64 precision. Cameras, pixel subsets
(``pixel_index``) and ``image_size`` are accepted; cameras are ignored, pixel indices select the matching
elements of the means/references when x_t is a [B, C, N, 1] pixel subset.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from dreamcore.cameras import VIEW_LABELS, Cameras
from dreamcore.priors.base import NoiseSchedule, PromptEmbeddings, Prior

PredictionType = Literal["epsilon", "v_prediction"]


def sd_schedule(prediction_type: PredictionType = "epsilon", steps: int = 1000, beta_start: float = 0.00085,
                beta_end: float = 0.012, dtype: torch.dtype = torch.float64) -> NoiseSchedule:
    """Stable Diffusion's scaled-linear ᾱ table (β linear in √β) in ``dtype`` (float64 by default)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return NoiseSchedule(torch.cumprod(1.0 - betas, 0).to(dtype), prediction_type)


def _select(data: Tensor, pixel_index: Optional[Tensor], like: Tensor) -> Tensor:
    """data [B, …, C, H, W] as is, or gathered to [B, …, C, N, 1] at ``pixel_index`` [B, N] for pixel subsets."""
    if pixel_index is None or data.shape[-2:] == like.shape[-2:] or data.shape[-2:] == (1, 1):
        return data
    flat = data.flatten(-2)
    idx = pixel_index.to(data.device).view(pixel_index.shape[0], *([1] * (flat.dim() - 2)), -1)
    return flat.gather(-1, idx.expand(*flat.shape[:-1], idx.shape[-1]))[..., None]


class _AnalyticPrior(Prior):
    """Shared plumbing: identity model space, schedule, ε* → the configured prediction type."""

    def __init__(self, schedule: Optional[NoiseSchedule], prediction_type: PredictionType) -> None:
        super().__init__()
        if schedule is None:
            schedule = sd_schedule(prediction_type)
        self.schedule = NoiseSchedule(schedule.alphas_cumprod, prediction_type)

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """x = rgb as [B, C, H, W] (identity up to layout)."""
        return rgb.permute(0, 3, 1, 2)

    def _alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.schedule.alpha_sigma(t.to(self.schedule.alphas_cumprod.device))
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a.view(shape).to(like), s.view(shape).to(like)

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """ε* (``epsilon``) or v = α_t ε* − σ_t x̂_0* (``v_prediction``) for each row's condition."""
        eps = self.optimal_epsilon(x_t, t, embeddings, pixel_index)
        if self.schedule.prediction_type == "epsilon":
            return eps
        a, s = self._alpha_sigma(t, x_t)
        x0 = (x_t - s * eps) / a
        return a * eps - s * x0

    def optimal_epsilon(self, x_t: Tensor, t: Tensor, embeddings: Tensor,
                        pixel_index: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def optimal_x0(self, x_t: Tensor, t: Tensor, embeddings: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """x̂_0* = (x_t − σ_t ε*) / α_t."""
        a, s = self._alpha_sigma(t, x_t)
        return (x_t - s * self.optimal_epsilon(x_t, t, embeddings, pixel_index)) / a


class GaussianPrior(_AnalyticPrior):
    """Data N(μ_k, s_k² I) per condition k; ε*_k(x_t, t) = σ_t (x_t − α_t μ_k) / (α_t² s_k² + σ_t²).

    ``means`` [K, C, H, W] (H, W may be 1 to broadcast over any image size), ``stds`` [K] (or a float for all).
    A condition is its integer id k carried in an embedding [1, 1] (:meth:`embedding`); ids must be integers
    (embedding interpolation is not meaningful here — use :class:`ReferenceSetPrior` for that).
    ``names`` maps prompt roles to ids for :meth:`encode_prompt`: ``y`` (the prompt), ``uncond`` (the negative
    prompt), ``null`` (the empty prompt) and optionally the view labels ``front``/``side``/``back``/``overhead``.
    By default y = 0, uncond = 1 and null = 2, each falling back to the last id when K is smaller.
    """

    def __init__(self, means: Tensor, stds: Tensor | float | Sequence[float] = 1.0,
                 names: Optional[dict[str, int]] = None, schedule: Optional[NoiseSchedule] = None,
                 prediction_type: PredictionType = "epsilon") -> None:
        super().__init__(schedule, prediction_type)
        if means.dim() != 4:
            raise ValueError(f"means must be [K, C, H, W], got {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=means.dtype)
        stds = stds.expand(k).clone() if stds.dim() == 0 else stds
        if stds.shape != (k,) or bool((stds < 0).any()):
            raise ValueError(f"stds must be {k} non-negative numbers, got {stds.tolist()}")
        self.register_buffer("means", means.clone())
        self.register_buffer("stds", stds)
        self.channels = means.shape[1]
        self.names = dict(names) if names is not None else {"y": 0, "uncond": min(1, k - 1), "null": min(2, k - 1)}
        if "y" not in self.names:
            raise ValueError("names needs the prompt's id under 'y'")
        if "uncond" not in self.names:
            self.names["uncond"] = self.names.get("null", self.names["y"])
        self.names.setdefault("null", self.names["uncond"])
        if any(not 0 <= v < k for v in self.names.values()):
            raise ValueError(f"condition ids must lie in [0, {k}), got {self.names}")

    @staticmethod
    def embedding(k: int) -> Tensor:
        """The condition [1, 1] selecting Gaussian k."""
        return torch.tensor([[float(k)]])

    def ids(self, embeddings: Tensor) -> Tensor:
        e = embeddings.reshape(embeddings.shape[0], -1)[:, 0]
        ids = e.round().long()
        if not torch.allclose(e.double(), ids.double()):
            raise ValueError("GaussianPrior conditions are integer ids; got interpolated embeddings")
        return ids.to(self.means.device)

    def encode_prompt(self, prompt: str = "", negative_prompt: str = "", views=None) -> PromptEmbeddings:
        """cond: ``default`` = y (plus the view labels present in ``names``); uncond; null. Text is ignored."""
        n = self.names
        cond = {"default": self.embedding(n["y"])}
        for label in VIEW_LABELS:
            if label in n:
                cond[label] = self.embedding(n[label])
        return PromptEmbeddings(cond, self.embedding(n["uncond"]), prompt, null=self.embedding(n["null"]))

    def kappa(self, t: Tensor, k: int) -> Tensor:
        """κ_k(t) = α_t σ_t / (α_t² s_k² + σ_t²) [B] (the slope of E_ε[ε*_k − ε] in x)."""
        a, s = self.schedule.alpha_sigma(t)
        return a * s / (a**2 * self.stds[k].to(a) ** 2 + s**2)

    def optimal_epsilon(self, x_t: Tensor, t: Tensor, embeddings: Tensor,
                        pixel_index: Optional[Tensor] = None) -> Tensor:
        ids = self.ids(embeddings)
        mu = _select(self.means[ids].to(x_t), pixel_index, x_t)
        std = self.stds[ids].to(x_t).view(-1, *([1] * (x_t.dim() - 1)))
        a, s = self._alpha_sigma(t, x_t)
        return s * (x_t - a * mu) / (a**2 * std**2 + s**2)


class ReferenceSetPrior(_AnalyticPrior):
    """Mixture of references: x̂_0* = Σ_i softmax_i(log w_i − ‖x_t − α_t r_i‖²/(2σ_t²)) r_i, ε* = (x_t − α_t x̂_0*)/σ_t.

    ``refs`` [N, C, H, W]. A condition is a weight vector [1, N] over the references (non-negative, not
    necessarily normalized; zero weights exclude a reference), so interpolating conditions mixes their data
    as embedding interpolation would. ``labels`` [N] names each reference's prompt: :meth:`encode_prompt` gives
    ``cond['default']`` = the references labelled ``y`` (all when no label is ``y``), one condition per view label
    present among the labels, and ``uncond`` = ``null`` = all references equally weighted.
    Computed in log space (stable at small t, where the softmax is one-hot); σ_t must be > 0.
    """

    def __init__(self, refs: Tensor, labels: Optional[Sequence[str]] = None, schedule: Optional[NoiseSchedule] = None,
                 prediction_type: PredictionType = "epsilon") -> None:
        super().__init__(schedule, prediction_type)
        if refs.dim() != 4:
            raise ValueError(f"refs must be [N, C, H, W], got {tuple(refs.shape)}")
        self.register_buffer("refs", refs.clone())
        self.channels = refs.shape[1]
        self.labels = list(labels) if labels is not None else ["y"] * refs.shape[0]
        if len(self.labels) != refs.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {refs.shape[0]} references")

    def weights(self, label: Optional[str] = None) -> Tensor:
        """Uniform weights [1, N] over the references with ``label`` (all when None or when none has it)."""
        mask = torch.tensor([label is None or lbl == label for lbl in self.labels], dtype=self.refs.dtype)
        if mask.sum() == 0:
            mask = torch.ones_like(mask)
        return (mask / mask.sum())[None]

    def encode_prompt(self, prompt: str = "", negative_prompt: str = "", views=None) -> PromptEmbeddings:
        cond = {"default": self.weights("y")}
        for label in VIEW_LABELS:
            if label in self.labels:
                cond[label] = self.weights(label)
        everything = self.weights(None)
        return PromptEmbeddings(cond, everything, prompt, null=everything.clone())

    def posterior(self, x_t: Tensor, t: Tensor, embeddings: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """π_i(x_t) [B, N]: the references' posterior probabilities."""
        b, n = x_t.shape[0], self.refs.shape[0]
        a, s = self._alpha_sigma(t, x_t)
        refs = _select(self.refs.to(x_t)[None].expand(b, *self.refs.shape), pixel_index, x_t)  # [B, N, C, ...]
        diff = (x_t[:, None] - a[:, None] * refs).reshape(b, n, -1)
        logw = embeddings.reshape(b, n).to(x_t).log()  # −inf for excluded references
        logits = logw - diff.pow(2).sum(-1) / (2.0 * s.view(b, 1) ** 2)
        return torch.softmax(logits, dim=1)

    def optimal_x0(self, x_t: Tensor, t: Tensor, embeddings: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        b = x_t.shape[0]
        refs = _select(self.refs.to(x_t)[None].expand(b, *self.refs.shape), pixel_index, x_t)
        return torch.einsum("bn,bn...->b...", self.posterior(x_t, t, embeddings, pixel_index), refs)

    def optimal_epsilon(self, x_t: Tensor, t: Tensor, embeddings: Tensor,
                        pixel_index: Optional[Tensor] = None) -> Tensor:
        a, s = self._alpha_sigma(t, x_t)
        return (x_t - a * self.optimal_x0(x_t, t, embeddings, pixel_index)) / s


class JointGaussianPrior(_AnalyticPrior):
    """F views of one object jointly Gaussian with cross-view correlation ρ (see the module docstring): ``mean``
    [F, C, H, W] (the object's views in group order), scale ``std`` s, ``correlation`` ρ ∈ (−1/(F−1), 1).
    Batches are whole groups of F views (contiguous); one condition (embeddings are ignored), cameras ignored."""

    def __init__(self, mean: Tensor, std: float = 1.0, correlation: float = 0.5,
                 schedule: Optional[NoiseSchedule] = None, prediction_type: PredictionType = "epsilon") -> None:
        super().__init__(schedule, prediction_type)
        if mean.dim() != 4:
            raise ValueError(f"mean must be [F, C, H, W], got {tuple(mean.shape)}")
        f = mean.shape[0]
        if not (f == 1 or -1.0 / (f - 1) < correlation < 1.0) or std <= 0:
            raise ValueError(f"need std > 0 and -1/(F-1) < correlation < 1, got {std}, {correlation} for F = {f}")
        self.register_buffer("mean", mean.clone())
        self.views_per_sample = f
        self.channels = mean.shape[1]
        self.std, self.correlation = float(std), float(correlation)

    def eigenvalues(self) -> tuple[float, float]:
        """(λ₁, λ₀): Σ's eigenvalue on the views' mean and on deviations from it."""
        f, s2, r = self.views_per_sample, self.std**2, self.correlation
        return s2 * (1 + (f - 1) * r), s2 * (1 - r)

    def encode_prompt(self, prompt: str = "", negative_prompt: str = "", views=None) -> PromptEmbeddings:
        one = torch.zeros(1, 1)
        return PromptEmbeddings({"default": one}, one, prompt, null=one)

    def optimal_epsilon(self, x_t: Tensor, t: Tensor, embeddings: Tensor,
                        pixel_index: Optional[Tensor] = None) -> Tensor:
        f = self.views_per_sample
        if x_t.shape[0] % f:
            raise ValueError(f"a batch of {x_t.shape[0]} is not a whole number of {f}-view groups")
        a, s = self._alpha_sigma(t, x_t)
        mu = self.mean.to(x_t).repeat(x_t.shape[0] // f, 1, 1, 1)
        d = x_t - a * mu
        d_mean = d.reshape(-1, f, *d.shape[1:]).mean(1, keepdim=True).expand(-1, f, *d.shape[1:]).reshape(d.shape)
        lam1, lam0 = self.eigenvalues()
        return s * (d_mean / (a**2 * lam1 + s**2) + (d - d_mean) / (a**2 * lam0 + s**2))
