"""What post-processing learned from the user's unlabelled images does to labelled retrieval (issue 13).

For each labelled domain set, one model's plain vectors (L2-normalised, no centre) are scored with
labels (leave-one-out mAP at 224 px), then again after transforms fitted without labels:

- ``centre``: minus the set's mean vector, normalised again (what ``export.center_images`` stores;
  ``trainer/center.py``), fitted on all images, on a random 16 / 58 / 128 (3 draws each), and on one
  half and scored on the other half (``half``: does it carry over to images it never saw?);
- ``pca64`` / ``pca256``: centred, projected on the top principal components;
- ``whiten``: centred, PCA-whitened with shrinkage (eigenvalues ``(l + a * mean(l)) ** -b``).

    python bench/domain_center.py [--model default] [--set emoji-google ...] [--json]
"""

from __future__ import annotations

from collections.abc import Callable

import harness
import numpy as np

SETS = ("emoji-google", "emoji-twitter", "icons-tabler")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _map(x: np.ndarray, y: np.ndarray) -> float:
    from lookalike.trainer.eval.metrics import retrieval_metrics

    return 100 * retrieval_metrics(x, y, x, y, knn_k=(1,), recall_k=(1,), exclude_self=True)["mAP"]


def _pca(fit: np.ndarray, dims: int | None, power: float, shrink: float) -> Callable[[np.ndarray], np.ndarray]:
    mu = fit.mean(0)
    lam, vec = np.linalg.eigh(np.cov((fit - mu).T, bias=True))
    lam, vec = lam[::-1], vec[:, ::-1]
    if dims:
        lam, vec = lam[:dims], vec[:, :dims]
    w = vec * (np.clip(lam, 0, None) + shrink * lam.mean() + 1e-12) ** -power
    return lambda x: _unit((x - mu) @ w)


def study(name: str, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    rng = np.random.default_rng(0)
    a, b = np.split(rng.permutation(len(x)), [len(x) // 2])
    out = {"plain": _map(x, y), "centre": _map(_unit(x - x.mean(0)), y)}
    for n in (16, 58, 128):
        draws = [rng.choice(len(x), n, replace=False) for _ in range(3)]
        out[f"centre of {n}"] = float(np.mean([_map(_unit(x - x[d].mean(0)), y) for d in draws]))
    out["half: plain"] = _map(x[b], y[b])
    out["half: centre of the other half"] = _map(_unit(x[b] - x[a].mean(0)), y[b])
    for dims in (64, 256):
        out[f"pca{dims}"] = _map(_pca(x, dims, 0.0, 0.0)(x), y)
    for power, shrink in ((0.25, 1.0), (0.5, 1.0), (0.5, 0.1)):
        out[f"whiten b{power} a{shrink}"] = _map(_pca(x, None, power, shrink)(x), y)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--model", default="default", help="model file or 'default' (its centre, if any, is left out)")
    ap.add_argument("--set", action="append", choices=SETS, help="repeat; default: all three")
    args = ap.parse_args(argv)
    out = harness.Results(args)
    from lookalike.trainer.eval.domains import load_domain
    from lookalike.trainer.eval.embedders import DEFAULT, ModelFileEmbedder, default_model_file

    path = default_model_file() if args.model == DEFAULT else args.model
    embedder = ModelFileEmbedder(path, plain=True)
    for name in args.set or SETS:
        gallery, _ = load_domain(name)
        row = study(name, embedder.embed(gallery.images).astype(np.float64), np.asarray(gallery.labels))
        out.add({"set": name, "model": args.model, "n": len(gallery.images), "mAP": row})
        if out.table:
            print(f"{name} ({len(gallery.images)} images, {args.model}): "
                  + " | ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
