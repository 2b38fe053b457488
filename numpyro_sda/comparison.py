r"""One table comparing inference methods on the same assimilation problem.

Each method (SDA or a baseline, after ``run``) becomes a row; each metric of
:mod:`numpyro_sda.metrics` that applies becomes a column:

==================  =========================================================================
column              meaning (physical units when ``system`` is given)
==================  =========================================================================
``draws``           number of posterior trajectories :math:`M`
``rmse``            RMSE of the posterior mean to ``truth``
``spread``          ensemble spread (NaN for one draw)
``spread_skill``    :math:`\sqrt{(M+1)/M}` spread / RMSE (1 when calibrated)
``crps``            mean element-wise CRPS of the draws at ``truth``
``energy_score``    energy score of the whole flattened trajectory at ``truth``
``w1``              exact Wasserstein-1 between the draws and the ``reference`` draws
                    (Rozet & Louppe 2023, §4.1), on at most ``max_w1_samples`` of each
``log_likelihood``  mean over draws of :math:`\log p(y \mid x)` (model units; with
                    ``log_likelihood=True`` or ``model_args`` / ``model_kwargs``)
``log_prior``       mean over draws of :math:`\log p(x)` under ``prior`` (model units)
``log_evidence``    the method's own estimate, when it reports one in ``sample_stats``
``wall_time``, ``compile_time``, ``model_evals``  the method's cost as it recorded it
==================  =========================================================================

The frame prints as text (``print(df)`` / ``df.to_string()``) and as Markdown with
:func:`to_markdown` (no dependency on ``tabulate``). Protocols over several observation sets
keep one table per set and label (e.g. scenario): :func:`medians_over_sets` gives the medians the
field reports, :func:`set_rows` the per-set rows, and :func:`write_json` writes either atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from numpyro_sda import metrics
from numpyro_sda.results import InferenceMethod

__all__ = ["compare", "to_markdown", "trajectories_of", "medians_over_sets", "set_rows",
           "write_json"]


def trajectories_of(result: Any, name: str = "result") -> np.ndarray:
    """The trajectory draws ``(M, length, *state)`` of a run method, or of an array of draws."""
    if isinstance(result, InferenceMethod):
        samples = result.get_samples()
        if result.prior_site not in samples:
            raise ValueError(f"{name}: no draws of its trajectory site {result.prior_site!r}")
        x = np.asarray(samples[result.prior_site])
    elif hasattr(result, "shape"):
        x = np.asarray(result)
    else:
        raise TypeError(f"{name} must be an InferenceMethod after run(...) or an array of draws "
                        f"(draws, length, *state), got {type(result).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name}: trajectory draws must have shape (draws, length, *state), got "
                         f"{x.shape}")
    return x


def check_finite_draws(x: np.ndarray, name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` when some of its draws hold NaN or inf."""
    bad = ~np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    if bad.any():
        raise ValueError(
            f"{name}: {int(bad.sum())} of {x.shape[0]} draws contain NaN or infinite values "
            f"(first: draw {int(np.argmax(bad))}); the method diverged for them (SDA marks them "
            "in sample_stats['diverging']). Compare the finite draws, e.g. "
            "results[name] = draws[finite], or rerun the method with safer settings"
        )


def _to_physical(x: np.ndarray, system: Any) -> np.ndarray:
    return x if system is None else np.asarray(system.denormalize(x))


def compare(
    results: Mapping[str, Any],
    truth: Any = None,
    reference: Any = None,
    *,
    system: Any = None,
    model_args: tuple | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    model: Callable | None = None,
    prior: Any = None,
    crps_estimator: str = "nrg",
    max_w1_samples: int = 2048,
    log_likelihood: bool | None = None,
) -> pd.DataFrame:
    """Score several methods' posterior trajectories on the same footing.

    Args:
        results: name -> method after ``run`` (or an array of draws ``(M, length, *state)``,
            e.g. a second ground-truth run for the W1 noise floor).
        truth: the true trajectory ``(length, *state)`` in the same (model) units as the draws.
        reference: ground-truth posterior draws (a method or an array) for the W1 column.
        system: a dynamical system; draws, truth and reference are denormalised with
            ``system.denormalize`` before RMSE/spread/CRPS/energy score/W1.
        model_args, model_kwargs: the model arguments (observations included) for the
            ``log_likelihood`` column, computed with each method's model (or ``model``; arrays
            of draws use the first method's model, every method being run on the same model).
            The prior argument only needs the right event shape and is never sampled. By
            default each method uses the arguments its ``run`` received (kept on the result).
        log_likelihood: compute the ``log_likelihood`` column (default: when ``model_args`` or
            ``model_kwargs`` is given).
        prior: a distribution with an exact ``log_prob`` (e.g. ``system.markov_prior(length)``)
            for the ``log_prior`` column.
        crps_estimator: ``"nrg"`` (default) or ``"fair"``; see :func:`numpyro_sda.metrics.crps`.
        max_w1_samples: W1 uses the first this-many draws of each set (the draws of every method
            here are independent, so this is a random subsample).

    Returns:
        A DataFrame indexed by method name.

    Raises:
        ValueError: empty ``results``; trajectories of different shapes (named per method);
            draws with NaN or inf (named per method); ``truth`` or ``reference`` of the wrong
            shape.
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict name -> InferenceMethod")
    model_draws = {str(k): trajectories_of(v, f"results[{k!r}]") for k, v in results.items()}
    for k, x in model_draws.items():
        check_finite_draws(x, f"results[{k!r}]")
    shapes = {k: tuple(v.shape[1:]) for k, v in model_draws.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k}: {s}" for k, s in shapes.items())
        raise ValueError(f"all results must hold trajectories of the same shape (length, *state) "
                         f"to be compared; got {listing}")
    shape = next(iter(shapes.values()))

    truth_phys = None
    if truth is not None:
        t = np.asarray(truth)
        if tuple(t.shape) != shape:
            raise ValueError(f"truth must have the shape of one trajectory {shape} "
                             f"(length, *state), got {tuple(t.shape)}")
        truth_phys = _to_physical(t, system)
    ref_phys = None
    if reference is not None:
        ref = trajectories_of(reference, "reference")
        check_finite_draws(ref, "reference")
        if tuple(ref.shape[1:]) != shape:
            raise ValueError(f"reference draws must have shape (draws, *{shape}), got {ref.shape}")
        ref_phys = _to_physical(ref, system)[:max_w1_samples]
    want_ll = (model_args is not None or model_kwargs is not None if log_likelihood is None
               else bool(log_likelihood))
    default_model = next((r.model for r in results.values() if isinstance(r, InferenceMethod)),
                         None)

    rows = []
    for name, x_model in model_draws.items():
        res = results[name]
        x = _to_physical(x_model, system)
        row: dict[str, Any] = {"method": name, "draws": int(x.shape[0])}
        if truth_phys is not None:
            row["rmse"] = float(metrics.rmse(x, truth_phys))
            row["spread"] = float(metrics.spread(x))
            row["spread_skill"] = (float(metrics.spread_skill_ratio(x, truth_phys))
                                   if x.shape[0] > 1 else math.nan)
            row["crps"] = float(metrics.crps(x, truth_phys, estimator=crps_estimator))
            row["energy_score"] = float(metrics.energy_score(x, truth_phys,
                                                             estimator=crps_estimator))
        elif x.shape[0] > 1:
            row["spread"] = float(metrics.spread(x))
        if ref_phys is not None:
            row["w1"] = metrics.wasserstein1(x[:max_w1_samples], ref_phys,
                                             max_samples=max_w1_samples)
        if want_ll:
            fn = model if model is not None else getattr(res, "model", default_model)
            if fn is None:
                raise ValueError(f"results[{name!r}] is an array and no method in results has a "
                                 f"model: pass model=... for the log_likelihood column")
            args, kwargs = _model_arguments(res, results, model_args, model_kwargs, name)
            row["log_likelihood"] = float(np.mean(metrics.log_likelihood(
                fn, x_model, args, kwargs)))
        if prior is not None:
            row["log_prior"] = float(np.mean(metrics.log_prior(prior, x_model)))
        if isinstance(res, InferenceMethod):
            ev = res.sample_stats.get("log_evidence")
            if ev is not None and np.ndim(ev) == 0:
                row["log_evidence"] = float(ev)
            row["wall_time"] = float(res.wall_time)
            row["compile_time"] = math.nan if res.compile_time is None else float(res.compile_time)
            row["model_evals"] = int(res.num_model_evals)
        rows.append(row)

    order = ["draws", "rmse", "spread", "spread_skill", "crps", "energy_score", "w1",
             "log_likelihood", "log_prior", "log_evidence", "wall_time", "compile_time",
             "model_evals"]
    df = pd.DataFrame(rows).set_index("method")
    df = df[[c for c in order if c in df.columns]]
    df.attrs["units"] = "physical" if system is not None else "model"
    return df


def _model_arguments(res: Any, results: Mapping[str, Any], model_args: tuple | None,
                     model_kwargs: Mapping[str, Any] | None, name: str) -> tuple[tuple, dict]:
    """The model arguments for the log-likelihood of one row: the given ones, else those the
    method's ``run`` received (arrays of draws: the first method's)."""
    if model_args is not None or model_kwargs is not None:
        return tuple(model_args or ()), dict(model_kwargs or {})
    src = res if isinstance(res, InferenceMethod) else next(
        (r for r in results.values() if isinstance(r, InferenceMethod)), None)
    if src is None or not (src.model_args or src.model_kwargs):
        raise ValueError(f"results[{name!r}]: no model arguments for the log_likelihood column; "
                         "pass model_args=... / model_kwargs=...")
    return tuple(src.model_args), dict(src.model_kwargs)


def _fmt(v: Any, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float | np.floating):
        return format(float(v), floatfmt)
    return str(v)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (index included); NaN prints as ``–``."""
    header = [str(df.index.name or ""), *map(str, df.columns)]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(df.columns)) + "|"]
    for idx, *values in df.itertuples(name=None):
        cells = [str(idx), *(_fmt(v, floatfmt) for v in values)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def medians_over_sets(tables: Mapping[str, Sequence[pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Per label, each method's median over the sets of every numeric column of its per-set
    :func:`compare` tables, after a leading ``sets`` column (the number of sets)."""
    medians = {}
    for label, ts in tables.items():
        med = pd.concat(ts).groupby(level=0, sort=False).median(numeric_only=True)
        med.insert(0, "sets", len(ts))
        medians[label] = med
    return medians


def set_rows(tables: Mapping[str, Sequence[pd.DataFrame]], first_set: int = 0) -> list[dict]:
    """One record ``{"label", "set", "method", **metrics}`` per label, set and method, the sets
    numbered from ``first_set`` (for a JSON log an interrupted run can be resumed from)."""
    return [dict(label=label, set=first_set + j, method=m, **t.loc[m].to_dict())
            for label, ts in tables.items() for j, t in enumerate(ts) for m in t.index]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON through a temporary file and :func:`os.replace`, so that a reader
    (or an interrupted run) never sees a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)
