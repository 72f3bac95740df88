"""The gated PixelCNN prior: its likelihood against torch.distributions and brute force, its masks
checked with gradients, training to the entropy of a known distribution, and sampling."""

import itertools
import math
import warnings

import pytest
import torch
from torch.distributions import Categorical

from vaekit import load_model, losses
from vaekit.errors import IgnoredArgumentWarning
from vaekit.models import MODELS, GatedPixelCNN


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# --- the likelihood -----------------------------------------------------------------------------


def test_categorical_log_likelihood_matches_torch_distributions(gen):
    logits = torch.randn(5, 7, 3, 4, generator=gen, dtype=torch.float64) * 3  # [B, K, h, w]
    codes = torch.randint(7, (5, 3, 4), generator=gen)
    expected = Categorical(logits=logits.movedim(1, -1)).log_prob(codes).sum(dim=(1, 2))
    ours = losses.categorical_log_likelihood(codes, logits)
    assert ours.shape == (5,)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    # one position per example ([B, K] logits), by the formula ℓ_c − log Σ_k exp ℓ_k
    flat, c = logits[:, :, 0, 0], codes[:, 0, 0]
    brute = flat[torch.arange(5), c] - flat.exp().sum(dim=1).log()
    torch.testing.assert_close(losses.categorical_log_likelihood(c, flat), brute, rtol=0, atol=1e-12)


def test_categorical_log_likelihood_is_normalised_and_stable():
    logits = torch.tensor([[[0.3, -1.0], [2.0, 0.5], [-0.2, 1.5]]], dtype=torch.float64)  # K=3, 2 positions
    maps = torch.tensor(list(itertools.product(range(3), repeat=2)))  # all 9 maps, [9, 2]
    log_p = losses.categorical_log_likelihood(maps, logits.expand(9, 3, 2))
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    huge = torch.tensor([[1000.0, -1000.0, 0.0]])
    torch.testing.assert_close(
        losses.categorical_log_likelihood(torch.tensor([0]), huge), torch.tensor([0.0])
    )
    assert losses.categorical_log_likelihood(torch.tensor([1]), huge).item() == -2000.0


# --- the masks, checked with gradients ----------------------------------------------------------


def dependence(out, embedded):
    """``[n, h, w]`` bool: whether ``out`` at raster position b (summed over its channels) of
    example b has a non-zero gradient with respect to ``embedded[b]`` at each position."""
    n, width = out.shape[0], out.shape[-1]
    rows, cols = torch.arange(n) // width, torch.arange(n) % width
    (grad,) = torch.autograd.grad(out[torch.arange(n), :, rows, cols].sum(), embedded, retain_graph=True)
    return grad.abs().sum(dim=1) != 0


def field(height, width, reach, rows_only=False):
    """The receptive field the class docstring states, ``[h·w, h, w]`` bool: at (i, j), rows
    i−1−reach..i−1 within reach columns, and (unless ``rows_only``) c_{i, j−1−reach..j−1}."""
    i, j = (
        t.reshape(-1, 1, 1) for t in torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    )
    i2, j2 = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    above = (i2 < i) & (i2 >= i - 1 - reach) & ((j2 - j).abs() <= reach)
    left = (i2 == i) & (j2 < j) & (j2 >= j - 1 - reach)
    return above if rows_only else above | left


def random_model(size, kernel_size, num_layers, num_classes, seed=0):
    torch.manual_seed(seed)
    model = GatedPixelCNN(
        image_size=size,
        num_embeddings=5,
        hidden_channels=16,
        num_layers=num_layers,
        kernel_size=kernel_size,
        num_classes=num_classes,
    ).double()
    n = math.prod(model.map_size)
    embedded = torch.randn(n, 16, *model.map_size, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(n) % num_classes if num_classes else None
    return model, embedded, labels


CASES = [  # (map size, kernel_size, num_layers, num_classes)
    ((7, 7), 3, 1, 0),
    ((5, 8), 3, 2, 0),
    ((6, 4), 5, 1, 3),
    ((4, 5), 7, 2, 3),
    ((3, 9), 3, 3, 2),
    ((7, 7), 3, 12, 0),
    ((7, 7), 3, 12, 4),
]


@pytest.mark.parametrize(("size", "kernel_size", "num_layers", "num_classes"), CASES)
def test_logits_depend_on_exactly_the_earlier_positions_in_the_field(
    size, kernel_size, num_layers, num_classes
):
    model, embedded, labels = random_model(size, kernel_size, num_layers, num_classes)
    seen = dependence(model.logits_from_embedding(embedded, labels), embedded)  # [h·w, h, w]
    for b in range(seen.shape[0]):  # nothing at b or after it in raster order, exactly
        assert not seen[b].flatten()[b:].any(), f"position {divmod(b, size[1])} sees itself or the future"
    assert not seen[0].any()  # the first position depends on nothing in the map
    expected = field(*size, num_layers * (kernel_size // 2))
    assert torch.equal(seen, expected)  # and on everything in the docstring's field (random weights)


def test_no_blind_spot():
    """With L·⌊k/2⌋ ≥ max(h − 2, w − 1) every earlier position is seen: here 12·1 ≥ 6 on 7×7. The
    original PixelCNN's masked 3×3 convs miss a wedge above-right however deep; e.g. (5, 6) at (6, 0)."""
    model, embedded, _ = random_model((7, 7), 3, 12, 0, seed=1)
    seen = dependence(model.logits_from_embedding(embedded), embedded)
    for b in range(49):
        assert seen[b].flatten()[:b].all(), f"position {divmod(b, 7)} misses an earlier one"


@pytest.mark.parametrize(("size", "kernel_size", "num_layers"), [((6, 5), 3, 3), ((5, 7), 5, 2)])
def test_the_vertical_stack_sees_only_rows_above(size, kernel_size, num_layers):
    """Every layer's vertical pre-activation, which feeds the horizontal stack at the same (i, j),
    depends on rows < i only: rows i−1−(l+1)r..i−1, columns j ± (l+1)r at layer l (0-based)."""
    model, embedded, _ = random_model(size, kernel_size, num_layers, 0)
    captured = []
    for layer in model.layers:
        layer.vertical.register_forward_hook(lambda module, args, out: captured.append(out))
    model.logits_from_embedding(embedded)
    r = kernel_size // 2
    for depth, v_pre in enumerate(captured):
        seen = dependence(v_pre, embedded)
        assert torch.equal(seen, field(*size, (depth + 1) * r, rows_only=True)), f"layer {depth}"


def test_the_horizontal_stack_is_residual():
    """With every layer's output 1×1 conv zeroed, the layers add nothing and the residual path alone
    carries the horizontal stack's input, the left neighbour's embedding, to the head."""
    model, embedded, _ = random_model((4, 5), 3, 3, 0)
    for layer in model.layers:
        torch.nn.init.zeros_(layer.horizontal_out.weight)
        torch.nn.init.zeros_(layer.horizontal_out.bias)
    seen = dependence(model.logits_from_embedding(embedded), embedded)
    assert torch.equal(seen, field(4, 5, 0) & ~field(4, 5, 0, rows_only=True))  # only c_{i, j−1}
    assert seen.any()


# --- training reaches the entropy of a known distribution ---------------------------------------


class MarkovField:
    """Maps whose code at (i, j) is drawn given its left and upper neighbours from a fixed table
    (the first row given the left one, the first column given the upper one, the corner uniform)."""

    def __init__(self, num_codes, size, gen):
        self.k, self.size = num_codes, size
        self.both = torch.log_softmax(2.0 * torch.randn(num_codes, num_codes, num_codes, generator=gen), -1)
        self.left = torch.log_softmax(2.0 * torch.randn(num_codes, num_codes, generator=gen), -1)
        self.up = torch.log_softmax(2.0 * torch.randn(num_codes, num_codes, generator=gen), -1)

    def conditional(self, codes, i, j):  # [n, K]: log p(c_ij | neighbours)
        if i == 0 and j == 0:
            return torch.full((codes.shape[0], self.k), -math.log(self.k))
        if i == 0:
            return self.left[codes[:, 0, j - 1]]
        if j == 0:
            return self.up[codes[:, i - 1, 0]]
        return self.both[codes[:, i, j - 1], codes[:, i - 1, j]]

    def sample(self, n, gen):
        codes = torch.zeros(n, self.size, self.size, dtype=torch.long)
        for i, j in itertools.product(range(self.size), repeat=2):
            codes[:, i, j] = torch.multinomial(self.conditional(codes, i, j).exp(), 1, generator=gen)[:, 0]
        return codes

    def log_prob(self, codes):  # [n]
        positions = itertools.product(range(self.size), repeat=2)
        return sum(self.conditional(codes, i, j).gather(1, codes[:, i, j, None])[:, 0] for i, j in positions)


def test_training_reaches_the_entropy_of_a_markov_field(gen):
    """H = E[−log p(map)] of 6×6 maps over K = 4 codes is ≈ 26.8 nats (0.75 nats/code; uniform:
    36 log 4 = 49.9). A model blind to the upper neighbour could not go below ≈ 35.7 nats. 200 Adam
    steps reach within 0.13–0.28 nats of H (0.5–1.0 %, five seeds measured); the bound is 3 %.
    The gap is estimated paired, KL ≈ mean(log p − log q) over held-out maps, with its standard error."""
    field_ = MarkovField(4, 6, gen)
    train, test = field_.sample(20_000, gen), field_.sample(5_000, gen)
    log_p = field_.log_prob(test)
    entropy = -log_p.mean()
    torch.manual_seed(0)
    model = GatedPixelCNN(image_size=6, num_embeddings=4, hidden_channels=16, num_layers=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        batch = train[torch.randint(len(train), (64,), generator=gen)]
        loss = model.loss_function(*model(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        log_q = model.log_prob(test)
    gap = log_p - log_q  # [n]: its mean estimates KL(p ‖ q) ≥ 0
    kl, stderr = gap.mean(), gap.std() / math.sqrt(len(gap))
    assert kl > -3 * stderr  # not below the entropy: no position peeks at its own code
    assert kl < 0.03 * entropy + 3 * stderr, f"NLL {-log_q.mean():.2f} vs entropy {entropy:.2f}"
    assert -log_q.mean() < 0.6 * 36 * math.log(4)


def test_loss_function_terms(gen):
    model = GatedPixelCNN(image_size=(3, 4), num_embeddings=6, hidden_channels=8, num_layers=2)
    codes = torch.randint(6, (5, 1, 3, 4), generator=gen)
    out = model(codes)
    assert out.logits.shape == (5, 6, 3, 4) and out.codes.shape == (5, 3, 4)
    terms = model.loss_function(*out)
    log_p = model.log_prob(codes)
    torch.testing.assert_close(terms["loss"], -log_p.mean())
    assert not terms["NLL"].requires_grad and not terms["bits_per_code"].requires_grad
    torch.testing.assert_close(terms["bits_per_code"], terms["NLL"] / (12 * math.log(2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = model.loss_function(*out, beta=0.1, M_N=0.5, batch_idx=3)  # β has no KL term to weigh
    torch.testing.assert_close(same["loss"], terms["loss"])
    bf16 = model.loss_function(out.logits.bfloat16(), out.codes)
    assert bf16["loss"].dtype == torch.float32
    with pytest.warns(IgnoredArgumentWarning, match="typo"):
        model.loss_function(*out, typo=1)
    with pytest.warns(IgnoredArgumentWarning, match="typo"):
        model(codes, typo=1)


# --- sampling -----------------------------------------------------------------------------------


def test_samples_follow_the_model_distribution():
    """On 2×2 maps over K = 3 codes all 81 maps can be enumerated: their probabilities sum to 1
    (the autoregressive factorisation is normalised only if no factor sees its own code) and the
    frequencies of 8,000 samples match them within 4.5 binomial standard errors each."""
    torch.manual_seed(0)
    model = GatedPixelCNN(image_size=2, num_embeddings=3, hidden_channels=16, num_layers=2)
    for p in model.parameters():
        p.data.mul_(3.0)  # sharper conditionals than at initialisation
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, 2, 2)
    with torch.no_grad():
        probs = model.log_prob(maps).double().exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    n = 8000
    drawn = model.sample(n, generator=torch.Generator().manual_seed(1))
    index = (drawn.view(n, 4) * torch.tensor([27, 9, 3, 1])).sum(dim=1)  # the map's row in `maps`
    freq = torch.bincount(index, minlength=81).double() / n
    assert ((freq - probs).abs() <= 4.5 * (probs * (1 - probs) / n).sqrt() + 1e-3).all()


@pytest.mark.parametrize(
    ("size", "kernel_size", "num_layers", "num_classes"),
    [((3, 5), 3, 3, 0), ((4, 4), 5, 2, 3), ((5, 3), 7, 1, 0), ((2, 6), 3, 4, 2)],
)
def test_cached_sampling_draws_what_the_full_forward_gives(size, kernel_size, num_layers, num_classes):
    """The sampler's cached per-row and per-position computation against the plain definition: a
    full forward pass per position, drawing from softmax(logits / T) with the same generator."""
    torch.manual_seed(0)
    model = GatedPixelCNN(
        image_size=size,
        num_embeddings=6,
        hidden_channels=8,
        num_layers=num_layers,
        kernel_size=kernel_size,
        num_classes=num_classes,
    )
    labels = torch.arange(12) % num_classes if num_classes else None
    expected, gen = torch.zeros(12, *size, dtype=torch.long), torch.Generator().manual_seed(7)
    with torch.no_grad():
        for i, j in itertools.product(range(size[0]), range(size[1])):
            logits = model(expected, labels=labels).logits[:, :, i, j]
            expected[:, i, j] = torch.multinomial(torch.softmax(logits / 0.7, 1), 1, generator=gen)[:, 0]
    drawn = model.sample(12, generator=torch.Generator().manual_seed(7), labels=labels, temperature=0.7)
    assert torch.equal(drawn, expected)


def test_sampling_shapes_seeds_and_temperature():
    torch.manual_seed(0)
    model = GatedPixelCNN(image_size=(3, 5), num_embeddings=7, hidden_channels=8, num_layers=3)
    model.train()
    samples = model.sample(16, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (16, 3, 5) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < 7
    assert model.training  # restored after sampling in eval mode
    again = model.sample(16, "cpu", generator=torch.Generator().manual_seed(3))
    other = model.sample(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(samples, again) and not torch.equal(samples, other)
    # temperature → 0: every position is the argmax of its logits given the codes drawn before it
    greedy = model.sample(8, generator=torch.Generator().manual_seed(5), temperature=1e-4)
    with torch.no_grad():
        assert torch.equal(greedy, model(greedy).logits.argmax(dim=1))
    assert (greedy == greedy[0]).all()  # one deterministic map
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            model.sample(2, temperature=bad)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(0)


def test_conditional_samples_follow_the_label(gen):
    """Trained on 4×4 maps whose codes are the label with probability 0.85 (else uniform over 4),
    a conditional prior samples mostly the label's code, and differently for each label."""
    n = 3000
    labels = torch.randint(3, (n,), generator=gen)
    noise = torch.randint(4, (n, 4, 4), generator=gen)
    keep = torch.rand(n, 4, 4, generator=gen) < 0.85
    codes = torch.where(keep, labels.view(n, 1, 1), noise)
    torch.manual_seed(0)
    model = GatedPixelCNN(image_size=4, num_embeddings=4, hidden_channels=16, num_layers=2, num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        idx = torch.randint(n, (64,), generator=gen)
        loss = model.loss_function(*model(codes[idx], labels=labels[idx]))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for label in range(3):  # P(code = label) = 0.85 + 0.15/4 ≈ 0.89 in the data
        drawn = model.sample(100, generator=torch.Generator().manual_seed(label), labels=label)
        share = torch.bincount(drawn.flatten(), minlength=4).float() / drawn.numel()
        assert share[label] > 0.75 and share.argmax() == label, (label, share)
    mixed = model.sample(
        6, labels=torch.tensor([0, 1, 2, 0, 1, 2]), generator=torch.Generator().manual_seed(0)
    )
    assert (mixed.flatten(1).mode(dim=1).values == torch.tensor([0, 1, 2, 0, 1, 2])).all()
    by_default = model.sample(6, generator=torch.Generator().manual_seed(0))  # the classes in turn
    assert torch.equal(by_default, mixed)
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, labels=3)
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        model(codes[:2])
    with pytest.raises(ValueError, match="labels"):
        model(codes[:2], labels=torch.tensor([0.0, 1.0]))


# --- arguments, checks, saving ------------------------------------------------------------------


def test_unconditional_prior_ignores_labels(gen):
    model = GatedPixelCNN(image_size=3, num_embeddings=5, hidden_channels=8, num_layers=2)
    codes = torch.randint(5, (4, 3, 3), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_labels = model(codes, labels=torch.tensor([7, 1, 0, 3]))
    assert torch.equal(with_labels.logits, model(codes).logits)
    assert model.sample(2, labels=99).shape == (2, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 3}, "in_channels"),
        ({"image_size": 0}, "size"),
        ({"num_embeddings": 0}, "num_embeddings"),
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"num_layers": 0}, "num_layers"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": 1}, "kernel_size"),
        ({"num_classes": -1}, "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(**kwargs)


def test_bad_codes_raise(gen):
    model = GatedPixelCNN(image_size=(3, 4), num_embeddings=5, hidden_channels=8, num_layers=1)
    good = torch.randint(5, (2, 3, 4), generator=gen)
    for bad, match in [
        (good.float(), "integer"),
        (good + 5, r"\[0, 5\)"),
        (good - 1, r"\[0, 5\)"),
        (good.transpose(1, 2), "shape"),
        (good[:, None].expand(2, 2, 3, 4), "shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(bad)
    assert torch.equal(model(good[:, None]).logits, model(good).logits)  # [B, 1, h, w] or [B, h, w]


def test_save_and_load_round_trip(tmp_path, gen):
    torch.manual_seed(0)
    model = GatedPixelCNN(image_size=(4, 6), num_embeddings=9, hidden_channels=8, num_layers=3, num_classes=2)
    model.save_pretrained(tmp_path / "prior")
    codes, labels = torch.randint(9, (3, 4, 6), generator=gen), torch.tensor([0, 1, 1])
    assert MODELS["pixelcnn_prior"] is GatedPixelCNN and model.config["image_size"] == [4, 6]
    for loaded in (GatedPixelCNN.from_pretrained(tmp_path / "prior"), load_model(tmp_path / "prior")):
        assert type(loaded) is GatedPixelCNN and loaded.config == model.config
        assert torch.equal(loaded(codes, labels=labels).logits, model(codes, labels=labels).logits)


def test_sampling_leaves_the_thread_count_as_it_was():
    model = GatedPixelCNN(image_size=3, num_embeddings=4, hidden_channels=8, num_layers=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the sampler runs on one thread and then gives the two back
        model.sample(2, generator=torch.Generator().manual_seed(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
