"""storm.tl.enrichment gives decoupler's over-representation numbers on the markers of DLPFC 151673's layers.

storm keeps its own test: one-sided Fisher on the genes that could have been markers, the gene sets restricted to
them, Benjamini–Hochberg over every (domain, gene set) pair of a call. decoupler's two functions differ by design, and
are controlled for here:

- ``decoupler.mt.query_set`` (one list of genes) counts the sets as given against ``n_bg`` genes (20,000 by default)
  and corrects each list on its own: it gets the sets restricted to storm's background, ``n_bg`` = its size, and storm
  one domain at a time for the FDR;
- ``decoupler.mt.ora`` (a score per observation) takes the top ``n_up`` features of each observation as its list and
  reports only Benjamini–Hochberg-adjusted two-sided Fisher p-values: it gets a 0/1 marker indicator over the
  background, with ``n_bg=None`` (the background is its features).
"""

from __future__ import annotations

import decoupler as dc
import numpy as np
import pandas as pd
import pytest
from _data import real

import storm


@pytest.fixture(scope="module")
def layer_markers():
    adata = real("dlpfc", "151673")
    return storm.tl.domain_markers(adata, groupby="layer")


def _net(sets: dict[str, list[str]], background: set[str]) -> pd.DataFrame:
    """decoupler's long format, each set restricted to the background as storm restricts it."""
    return pd.DataFrame(
        [(s, g) for s, genes in sets.items() for g in genes if g in background], columns=["source", "target"]
    )


def _ora_n_up(n_markers: int, n_genes: int) -> int:
    """The ``n_up`` that makes ``decoupler.mt.ora`` take the top ``n_markers`` features of each observation.

    decoupler 2.2.0 keeps every feature ranked above the bottom ``n_up`` instead (scverse/decoupler#346, fixed by
    #347): a probe tells which the installed version does. Its one set holds the second-lowest feature, which only the
    broken selection takes (positive log odds ratio).
    """
    probe = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], index=["probe"], columns=["a", "b", "c", "d"])
    es, _ = dc.mt.ora(probe, pd.DataFrame({"source": ["s"], "target": ["b"]}), n_up=1, n_bg=None, tmin=1)
    return n_genes - n_markers if es.iloc[0, 0] > 0 else n_markers


@pytest.mark.slow  # ranks 5,000 genes over 3,600 spots (~10 s)
@pytest.mark.parametrize("collection", ["celltype", "signatures"])
def test_enrichment_gives_decoupler_ora_numbers_on_dlpfc_layer_markers(layer_markers, collection):
    background = list(layer_markers.attrs["background"])
    sets = storm.tl.load_gene_sets(collection)
    net = _net(sets, set(background))
    ours = storm.tl.enrichment(layer_markers, gene_sets=sets, fdr=1.0)
    assert len(ours) > 0
    for domain, genes in layer_markers.groupby("domain", observed=True)["gene"]:
        genes = genes.tolist()
        mine = ours[ours["domain"] == domain].set_index("gene_set")
        alone = storm.tl.enrichment({domain: genes}, gene_sets=sets, background=background, fdr=1.0)
        alone = alone.set_index("gene_set")
        query = dc.mt.query_set(genes, net, alternative="greater", n_bg=len(background), tmin=5).set_index("source")
        np.testing.assert_allclose(mine["pval"], query.loc[mine.index, "pval"], rtol=1e-12)  # measured: equal
        np.testing.assert_allclose(alone["fdr"], query.loc[alone.index, "padj"], rtol=1e-12)

        indicator = pd.DataFrame(0.0, index=[domain], columns=background)
        indicator.loc[domain, genes] = 1.0
        n_up = _ora_n_up(len(genes), len(background))
        log_odds, padj = dc.mt.ora(indicator, net, n_up=n_up, n_bg=None, empty=False, tmin=5)
        # the same 2×2 tables: decoupler's statistic is their log odds ratio with Haldane–Anscombe's +0.5
        a, b = alone["overlap"], alone["set_size"] - alone["overlap"]
        c, d = alone["n_markers"] - a, alone["n_background"] - alone["n_markers"] - b
        haldane = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
        np.testing.assert_allclose(log_odds.loc[domain, alone.index], haldane, rtol=1e-12)
        # two-sided equals one-sided on these tables (no overlap below the expected one is as unlikely as the observed);
        # decoupler returns its adjusted p-values as float32 (measured: 3.7e-8 relative)
        np.testing.assert_allclose(alone["fdr"], padj.loc[domain, alone.index], rtol=1e-6)
