"""Importance-sampled log p(x): vaekit's estimator (vectorised over the batch, chunked over k)
against a per-example loop (one data point at a time, as pythae's ``get_nll`` does); and the
decoders' importance samples per second in NCHW and channels-last memory layout (what
``vaekit evaluate`` uses); and what a VampPrior costs: its mixture density in the expanded float64
form vaekit uses against the direct [N, K, D] form, and importance samples/s with either prior.

    python benchmarks/bench_nll.py
"""

from __future__ import annotations

import torch
from common import report, time_call

from vaekit import MLPVAE, ConvVAE, VanillaVAE
from vaekit.evaluate import auto_chunk, widest_activation
from vaekit.losses import LOG_2PI, gaussian_mixture_log_prob


@torch.no_grad()
def per_example(model: MLPVAE, x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    return torch.cat([model.log_px(x[i : i + 1], num_samples=k, chunk_size=chunk)[0] for i in range(len(x))])


def main() -> None:
    torch.manual_seed(0)
    model = MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28).eval()
    x = torch.bernoulli(torch.rand(100, 1, 28, 28))
    rows = []
    for k in (100, 1000):
        with torch.no_grad():
            batched = time_call(
                lambda k=k: model.log_px(x, num_samples=k, chunk_size=auto_chunk(x, k)), repeats=3
            )
        looped = time_call(lambda k=k: per_example(model, x, k, chunk=k), repeats=1, warmup=0)
        for name, t in ((f"vectorised, chunk {auto_chunk(x, k)}", batched), ("per-example loop", looped)):
            rows.append(
                {
                    "examples": len(x),
                    "k": k,
                    "estimator": name,
                    **t,
                    "examples/s": round(len(x) / (t["median_ms"] / 1000), 1),
                }
            )
    report("nll", rows, ["examples", "k", "estimator", "median_ms", "min_ms", "examples/s"])
    layouts()
    priors()


def layouts(k: int = 200) -> None:
    """Importance samples per second, k per image for 100 binarized 28×28 images, by memory layout."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(100, 1, 28, 28))
    models = {
        "MLP VAE 2×300 (exemplar-fashion)": MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28),
        "ConvVAE [16, 32] (exemplar-fashion)": ConvVAE(1, 40, hidden_dims=[16, 32], image_size=28),
        "VanillaVAE [32, 64, 128] (default job)": VanillaVAE(
            1, 16, hidden_dims=[32, 64, 128], image_size=28, likelihood="bernoulli"
        ),
    }
    rows = []
    for name, model in models.items():
        model.eval()
        for layout in ("NCHW", "channels-last"):
            if layout == "channels-last":
                model = model.to(memory_format=torch.channels_last)
            chunk = auto_chunk(x, k, widest_activation(model, x))  # as vaekit evaluate sizes its calls
            t = time_call(lambda m=model, c=chunk: m.log_px(x, num_samples=k, chunk_size=c), repeats=3)
            rate = len(x) * k / (t["median_ms"] / 1000)
            rows.append({"model": name, "layout": layout, "k": k, **t, "samples/s": round(rate)})
    report("nll_layout", rows, ["model", "layout", "k", "median_ms", "samples/s"])


def direct_mixture_log_prob(z: torch.Tensor, mus: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """The textbook form: an [N, K, D] tensor of (z − μ)²/σ², in z's dtype."""
    sq = (z[:, None, :] - mus).pow(2) * torch.exp(-log_vars)  # [N, K, D]
    log_components = -0.5 * (sq + log_vars + LOG_2PI).sum(dim=-1)  # [N, K]
    return torch.logsumexp(log_components, dim=-1) - torch.log(torch.tensor(float(mus.shape[0])))


def chunked_direct_mixture_log_prob(z: torch.Tensor, mus: torch.Tensor, log_vars: torch.Tensor):
    return torch.cat([direct_mixture_log_prob(chunk, mus, log_vars) for chunk in z.split(1000)])


@torch.no_grad()
def priors(k: int = 200) -> None:
    """The VampPrior's cost: its density (K = 500, D = 40) per 10⁵ latents in two forms, and
    importance samples/s of the exemplar-fashion MLP VAE under either prior."""
    torch.manual_seed(0)
    mus, log_vars = torch.randn(500, 40), torch.randn(500, 40) - 2
    z = torch.randn(100_000, 40)
    forms = {
        "expanded, two matmuls, float64 (vaekit)": gaussian_mixture_log_prob,
        "direct [N, K, D], float32, chunks of 1,000": chunked_direct_mixture_log_prob,
    }
    rows = []
    for name, fn in forms.items():
        t = time_call(lambda f=fn: f(z, mus, log_vars), repeats=3)
        rate = round(len(z) / (t["median_ms"] / 1000))
        rows.append({"what": f"mixture log p(z), {name}", **t, "per second": rate})
    x = torch.bernoulli(torch.rand(100, 1, 28, 28))
    for prior in ("standard", "vamp"):
        model = MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28, prior=prior).eval()
        t = time_call(lambda m=model: m.log_px(x, num_samples=k, chunk_size=auto_chunk(x, k)), repeats=3)
        rate = round(len(x) * k / (t["median_ms"] / 1000))
        rows.append({"what": f"MLP VAE log p(x), {prior} prior, k = {k}", **t, "per second": rate})
    report("nll_priors", rows, ["what", "median_ms", "per second"])


if __name__ == "__main__":
    main()
