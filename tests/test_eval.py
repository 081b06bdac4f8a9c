"""Tests for eval.py's pure parts: the windowing of the perplexity and the comparison table."""
import numpy as np
import pytest

import compare
import data
import eval as evaluation


@pytest.mark.parametrize("n, block", [(1, 8), (7, 8), (8, 8), (9, 8), (100, 8), (101, 16),
                                      (1000, 128)])
def test_windows_score_every_target_once(n, block):
    wins, size = evaluation.windows(n, block)
    scored = []
    for start, first in wins:
        scored += [t for t in range(start + 1, start + size + 1) if t >= first]
        assert start + size <= n  # a window never runs past the stream
    assert scored == list(range(1, n + 1))


def test_unseen_document_counts_the_text_before_each_targets_window():
    # two documents: 6 tokens in 2 sentences, then 3; the stream is <|endoftext|> a..f
    # <|endoftext|> g h i
    split = data.assemble([0, 1], np.arange(100, 109, dtype=np.uint16), np.array([3, 3, 3]),
                          np.array([2, 1]))
    # windows of 4 advance by 2: targets 1-4 seen from token 0, 5-6 from 2, 7-8 from 4, 9-10 from 6.
    # Only targets 5 and 6 miss text of their document: token 1 of the 4 and 5 text tokens before
    # them; target 7 is the <|endoftext|> (not text), 8-10 see their document's whole text.
    targets, text = compare.unseen_document(split, 4)
    assert targets == pytest.approx(2 / 9) and text == pytest.approx((1 / 4 + 1 / 5) / 9)
    assert compare.unseen_document(split, 100) == (0.0, 0.0)  # one window holds the whole stream


def test_eval_table_is_a_row_per_run_against_none_and_fixed_of_its_seed():
    rows = [dict(run=f"out/seed{s}/{mode}", mode=mode, planner=None, seed=s, perplexity=p,
                 planner_top1=None, planner_top5=None)
            for s, mode, p in ((0, "none", 100), (0, "fixed", 95), (1, "fixed", 80))]
    rows.append(dict(run="out/seed0/soft-joint/best.pt", mode="soft", planner="joint", seed=0,
                     perplexity=90, planner_top1=0.1234, planner_top5=0.5))
    lines = evaluation.table(rows).splitlines()
    assert lines[0] == ("| run | mode | planner | seed | perplexity | vs none | vs fixed | "
                        "planner top-1 | planner top-5 |")
    assert lines[1] == "|---" * 9 + "|"
    assert lines[4] == "| fixed | fixed |  | 1 | 80.00 |  | +0.0% |  |  |"  # no none of seed 1
    assert lines[5] == "| soft-joint | soft | joint | 0 | 90.00 | -10.0% | -5.3% | 0.123 | 0.500 |"
    assert evaluation.table(rows[3:]).splitlines()[0].count("vs ") == 0


def test_runs_from_before_the_text_was_kept_are_paired_by_seed():
    rows = [dict(run=f"out/seed{s}/{mode}", mode=mode, planner=None, seed=s, perplexity=p,
                 text=None, planner_top1=None, planner_top5=None)
            for s, mode, p in ((0, "none", 100), (0, "fixed", 90), (1, "none", 200),
                               (1, "fixed", 190))]
    assert (evaluation.table(rows).splitlines()[5]
            == "| fixed | fixed |  | 1 | 190.00 | -5.0% | +0.0% |  |  |")


def test_eval_table_pairs_runs_on_the_same_text_and_tells_apart_runs_of_one_name():
    """Runs of two corpora, seed 0 each: each is set against the none of its own text; two runs
    named none are shown by their paths; the token counts differ, so each row has its own."""
    rows = [dict(run=f"out/{corpus}/none", mode="none", planner=None, seed=0, perplexity=p,
                 text=corpus, tokens=n, planner_top1=None, planner_top5=None)
            for corpus, p, n in (("a", 100, 1000), ("b", 400, 2000))]
    rows.append(dict(run="out/b/soft-joint", mode="soft", planner="joint", seed=0, perplexity=380,
                     text="b", tokens=2000, planner_top1=0.5, planner_top5=0.9))
    lines = evaluation.table(rows).splitlines()
    assert lines[0].startswith("| run | mode | planner | seed | tokens | perplexity | vs none |")
    assert lines[2] == "| out/a/none | none |  | 0 | 1,000 | 100.00 | +0.0% |  |  |"
    assert lines[3] == "| out/b/none | none |  | 0 | 2,000 | 400.00 | +0.0% |  |  |"
    assert lines[4] == ("| out/b/soft-joint | soft | joint | 0 | 2,000 | 380.00 | -5.0% | 0.500 "
                        "| 0.900 |")


def test_compare_table_pairs_seeds_against_none():
    rows = [dict(run=f"out/seed{s}/{name}", mode=name.split("-")[0],
                 planner=(name.split("-") + [None])[1], seed=s, perplexity=p,
                 planner_top1=None if name == "none" else 0.1 * (s + 1),
                 planner_top5=None if name == "none" else 0.5)
            for s in range(3) for name, p in (("none", 100 + 10 * s), ("soft-joint", 90 + 10 * s))]
    lines = compare.table(rows).splitlines()
    assert lines[2] == "| none (×3) | none |  | 110.00 ± 10.00 | +0.0% ± 0.0% |  |  |"
    # soft is 10, 10 and 10 lower: -10.0%, -9.1%, -8.3% against the none of its own seed
    assert lines[3] == ("| soft-joint (×3) | soft | joint | 100.00 ± 10.00 | -9.1% ± 0.8% | "
                        "0.200 ± 0.100 | 0.500 ± 0.000 |")
    single = compare.table(rows[:2]).splitlines()
    assert single[3] == "| soft-joint | soft | joint | 90.00 | -10.0% | 0.100 | 0.500 |"
    fixed = [dict(r, run=r["run"].replace("none", "fixed"), mode="fixed",
                  perplexity=r["perplexity"] - 5)
             for r in rows if r["mode"] == "none"]
    # then also against fixed: the plans' content
    with_fixed = compare.table(rows + fixed).splitlines()
    # fixed is 5 below none: 95, 105, 115 against soft's 90, 100, 110: -5.3%, -4.8%, -4.3%
    assert with_fixed[0] == ("| run | mode | planner | perplexity | vs none | vs fixed | "
                             "planner top-1 | planner top-5 |")
    assert with_fixed[1] == "|---" * 8 + "|"
    assert with_fixed[3] == ("| soft-joint (×3) | soft | joint | 100.00 ± 10.00 | "
                             "-9.1% ± 0.8% | -4.8% ± 0.5% | 0.200 ± 0.100 | 0.500 ± 0.000 |")
