"""Every built-in metric in one table: its name, what it is, which way is better, its unit.

The one home of a metric's meaning: the report's axis labels and legends read it, the experiment
writes it into ``manifest.json`` (``glossary``: so a run directory explains its own columns), and
``docs/metrics.md`` is rendered from it (:func:`markdown`; ``tests/test_workbench.py`` checks
the page is current). It imports nothing, so the report may read it.

The two KL divergences keep their names (old run directories, theory predictors and configs
spell them so) and the glossary says which direction each is: ``kl_divergence`` is
KL(real ‖ model) (the Gaussian moment suites: mass of the real law the model misses), while
``kl_to_real`` is KL(model ‖ real) (the categorical suite: mass the model puts where the real
law has little).

``better`` is one of ``higher``, ``lower``, ``near 1``, ``near 0`` or ``near real`` (the real
law's own value: an entropy neither rises nor falls for a good model, it matches; the real-data
floor, generation 0, shows that value).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    definition: str
    better: str  # "higher" | "lower" | "near 1" | "near 0" | "near real"
    unit: str
    # a short axis label (the name when empty), in plain Unicode: no mathtext, whose parser
    # took 0.15 s of every process that drew a figure
    label: str = ""
    suite: str = ""

    @property
    def axis_label(self) -> str:
        return self.label or self.name


_G = "gaussian moments (exact, or of samples)"
METRICS: tuple[Metric, ...] = (
    Metric("mean_error_sq", "‖μ_t − μ_0‖², squared distance of the fitted mean to the real one",
           "lower", "data units²", "‖μₜ − μ₀‖²", _G),
    Metric("trace_ratio", "tr Σ_t / tr Σ_0: the share of the real variance the model keeps",
           "near 1", "ratio", "tr Σₜ / tr Σ₀", _G),
    Metric("log_det_change", "log det Σ_t − log det Σ_0: the change of the law's log volume",
           "near 0", "nats", "log det Σₜ − log det Σ₀", _G),
    Metric("wasserstein2", "W2 between the Gaussian fits of model and real law",
           "lower", "data units", "W₂ to the real law", _G),
    Metric("kl_divergence", "KL(real ‖ model) of the Gaussian fits: real mass the model misses",
           "lower", "nats", "KL(real ‖ model)", _G),
    Metric("precision", "share of model samples inside the real manifold (k = 5): quality",
           "higher", "share", "precision", "samples / images / 2-D toys"),
    Metric("recall", "share of real points inside the model's manifold (k = 5): diversity",
           "higher", "share", "recall", "samples / images / 2-D toys"),
    Metric("density", "real k-NN balls per model sample / k (1 for matching laws)",
           "near 1", "ratio", "density", "samples / images / 2-D toys"),
    Metric("coverage", "share of real k-NN balls holding a model sample",
           "higher", "share", "coverage", "samples / images / 2-D toys"),
    Metric("mmd", "squared MMD (unbiased, RBF kernel, median bandwidth) to real points",
           "lower", "kernel units", "MMD²", "samples"),
    Metric("modes_covered", "modes holding at least mode_share of an even share of samples",
           "higher", "modes", "modes covered", "2-D toys"),
    Metric("high_quality", "share of samples within 3 std of their nearest mode",
           "higher", "share", "high-quality share", "2-D toys"),
    Metric("fd", "Fréchet distance of classifier features to the held-out images",
           "lower", "feature units²", "Fréchet distance", "images"),
    Metric("class_accuracy", "share of samples classified as the class they were drawn for",
           "higher", "share", "class accuracy", "images"),
    Metric("class_entropy", "entropy of the predicted-class histogram (log K when balanced)",
           "near real", "nats", "class entropy", "images"),
    Metric("perplexity", "exp of the mean held-out negative log-likelihood per token",
           "lower", "tokens", "perplexity", "text"),
    Metric("unigram_entropy", "plug-in entropy of the samples' symbols",
           "near real", "nats", "unigram entropy", "text"),
    Metric("bigram_entropy", "plug-in entropy of the samples' bigrams",
           "near real", "nats", "bigram entropy", "text"),
    Metric("distinct_2", "distinct bigrams / bigrams within sampled documents",
           "near real", "share", "distinct-2", "text"),
    Metric("distinct_3", "distinct trigrams / trigrams within sampled documents",
           "near real", "share", "distinct-3", "text"),
    Metric("ngram_support", "distinct top-order n-grams in the last training set",
           "higher", "n-grams", "n-gram support", "text (n-gram)"),
    Metric("support_size", "symbols the model still gives (probability > 0, or in samples)",
           "higher", "symbols", "support size", "categorical / text"),
    Metric("tail_mass", "the model's mass on the real tail symbols / the real law's",
           "near 1", "ratio", "tail mass", "categorical / text"),
    Metric("tail_coverage", "real tail mass on symbols the model still gives",
           "higher", "share", "tail coverage", "categorical"),
    Metric("entropy", "entropy of the fitted categorical law",
           "near real", "nats", "entropy", "categorical"),
    Metric("heterozygosity", "1 − Σ q²: chance two draws differ",
           "near real", "probability", "heterozygosity", "categorical"),
    Metric("tv_distance", "total variation ½ Σ |q − p_0| to the real law",
           "lower", "probability", "TV to the real law", "categorical"),
    Metric("kl_to_real", "KL(model ‖ real) = Σ q log(q / p_0): mass where the real law has little",
           "lower", "nats", "KL(model ‖ real)", "categorical"),
    Metric("heldout_loglik", "mean log-density of fresh real points under the model",
           "higher", "nats", "held-out log-likelihood", "density models"),
    Metric("homozygosity", "Σ q²: chance two draws agree (Seddik et al. 2024)",
           "near real", "probability", "homozygosity", "categorical"),
    Metric("missing_mass", "real mass of the symbols absent from the training set (a "
           "memoriser's test error)", "lower", "probability", "missing mass", "categorical"),
    Metric("excess_risk", "(ŵ_t − w*)ᵀ Σ_x (ŵ_t − w*) = ‖ŵ_t − w*‖²: the fit's excess test risk",
           "lower", "label units²", "excess risk ‖ŵₜ − w*‖²", "linear regression"),
    Metric("weight_norm", "‖ŵ_t‖, the norm of the fitted weights",
           "near real", "label units", "‖ŵₜ‖", "linear regression"),
    Metric("residual_variance", "RSS / (m − d) of the fit (NaN when m <= d)",
           "near real", "label units²", "residual variance", "linear regression"),
    Metric("mean_reward", "mean reward r(x) of the model's samples (loop.curation)",
           "higher", "reward units", "mean reward", "curation"),
    Metric("removed_share", "share of the composed training set that loop.preprocess removed",
           "lower", "share", "removed share", "preprocessing"),
    Metric("synthetic_share", "share of the training set that is synthetic",
           "lower", "share", "synthetic share", "web pool"),
    Metric("train_size", "training-set size (a pool without refill)",
           "higher", "points", "training size", "web pool"),
)  # fmt: skip
GLOSSARY: dict[str, Metric] = {m.name: m for m in METRICS}


def axis_label(name: str) -> str:
    """The axis label of a metric (its name when the glossary does not know it)."""
    m = GLOSSARY.get(name)
    return m.axis_label if m is not None else name


def as_dict() -> dict[str, dict[str, str]]:
    """The glossary as the manifest keeps it: name -> {definition, better, unit, suite}."""
    return {
        m.name: {k: v for k, v in asdict(m).items() if k not in ("name", "label")} for m in METRICS
    }


def markdown() -> str:
    """``docs/metrics.md``: the glossary as a page."""
    lines = [
        "# Metrics",
        "",
        "Every built-in metric (generated from `src/madloop/glossary.py`; do not edit by hand).",
        "`better` says which way a good model lies; `near real` means the value of the real",
        "data, which every run reports as its generation 0 (the real-data floor: a perfect",
        "model measured with the same evaluation size). The two KL divergences differ in",
        "direction: `kl_divergence` is KL(real ‖ model), `kl_to_real` is KL(model ‖ real).",
        "",
        "| name | definition | better | unit | suite |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in METRICS:
        lines.append(f"| `{m.name}` | {m.definition} | {m.better} | {m.unit} | {m.suite} |")
    return "\n".join(lines) + "\n"
