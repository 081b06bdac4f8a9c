"""
Look inside a corpus and a trained run: what the corpus holds, what its labels mean, and what the
planner guesses for each sentence of a held-out document.

    python explore.py --dataset wiki               # build (or load) the corpus, print a summary
    python explore.py --dataset wiki --labels 5    # five typical training sentences of every label
    python explore.py --dataset synthetic --synthetic-docs 2000
    python explore.py --dataset path/to/corpus.txt # or a folder of .txt files
    python explore.py out/soft-joint --browse 4    # the planner's top-5 labels for val document 4
    python explore.py out/soft-joint --plans mean  # val perplexity with every plan replaced
    python explore.py out/soft-joint --plans shuffled  # each plan replaced by another sentence's

With a RUN the corpus is the one it was trained on: the data flags and --seed are refused.
"""

import argparse

import numpy as np
import torch

import data
import eval as evaluation
import runtime
from planner import BigramPlanner, sentence_logits


def summary(corpus):
    m = corpus.meta
    lines = [f"{m['dataset']}: K={m['n_labels']} labels, D={m['embed_dim']}, seed={m['seed']}, "
             f"cache {m['cache']}"]
    for k, sp in corpus.splits.items():
        lines.append(f"  {k:5s}: {len(sp.doc_sent) - 1:7,d} documents {len(sp.sent_len):9,d} "
                     f"sentences {len(sp.tokens):11,d} tokens")
    p = (np.bincount(corpus.splits["train"].labels, minlength=len(corpus.codebook))
         / len(corpus.splits["train"].labels))
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    lines.append(f"  label entropy (train) {entropy:.2f} bits of at most {np.log2(len(p)):.2f}; "
                 f"k-means converged in {m['kmeans_steps']} steps")
    if "next_type_ceiling" in m:
        lines.append(f"  synthetic ambiguity {m['synthetic_ambiguity']}: the best possible top-1 "
                     f"accuracy on the next sentence's type is {m['next_type_ceiling']:.3f} "
                     "(Bayes-optimal, from the types before it)")
    base = label_baselines(corpus, "val")
    lines.append(f"  the next sentence's label on val, top-1 / top-5: the most frequent label "
                 f"{base['majority_top1']:.3f} / {base['majority_top5']:.3f}, a label bigram "
                 f"fitted on train {base['bigram_top1']:.3f} / {base['bigram_top5']:.3f}")
    lines.append(f"  a unigram LM (train token frequencies, add-one) on val: perplexity "
                 f"{unigram_perplexity(corpus, 'val'):,.1f}, the figure any trained LM must beat")
    how = (f"loaded from cache in {m['load_seconds']:.2f} s" if "load_seconds" in m
           else f"built in {m['build_seconds']:.1f} s")
    return "\n".join(lines + [f"  {how}"])


def unigram_perplexity(corpus, split):
    """Perplexity of add-one-smoothed train token frequencies on the targets eval.perplexity scores
    (every token of the split after its first, <|endoftext|> included)."""
    counts = np.bincount(corpus.to_rows(corpus.splits["train"].tokens),
                         minlength=len(corpus.vocab) if corpus.vocab else data.VOCAB_SIZE) + 1.0
    targets = corpus.to_rows(corpus.splits[split].tokens[1:])
    return float(np.exp(-np.mean(np.log(counts / counts.sum())[targets])))


def label_baselines(corpus, split):
    """What the planner's accuracy is to be read against, on the same split: the most frequent
    training label, and a label bigram fitted on train (the next label from the previous one alone;
    a document's first sentence from the first sentences' labels). Ties are broken by overall
    frequency, which also smooths each bigram row (by one count in all): top-1, top-5 and the
    cross-entropy of its distribution (nats)."""
    train, sp, k = corpus.splits["train"], corpus.splits[split], len(corpus.codebook)
    prior = np.bincount(train.labels, minlength=k) + 1e-3
    # planner.BigramPlanner's table, here read at the true previous labels (row k: none)
    bigram = BigramPlanner.fit(corpus.codebook, train.labels, train.doc_sent).log_probs.exp()
    first = np.zeros(len(sp.labels), bool)
    first[sp.doc_sent[:-1][np.diff(sp.doc_sent) > 0]] = True
    previous = np.where(first, k, np.concatenate([[k], sp.labels[:-1]]))
    out = {}
    for name, scores in (("majority", np.broadcast_to(prior, (len(sp.labels), k))),
                         ("bigram", bigram.double().numpy()[previous])):
        top = np.argsort(-scores, 1, kind="stable")[:, :5]
        p = scores[np.arange(len(sp.labels)), sp.labels] / scores.sum(1)
        out.update({f"{name}_top1": float(np.mean(top[:, 0] == sp.labels)),
                    f"{name}_top5": float(np.mean((top == sp.labels[:, None]).any(1))),
                    f"{name}_ce": float(-np.mean(np.log(p)))})
    return out


def typical_sentences(corpus, label, n):
    """The n training sentences of a label nearest to its centroid, as one-line texts."""
    train = corpus.splits["train"]
    members = np.flatnonzero(train.labels == label)
    return [" ".join(corpus.sentence_text("train", s).split())
            for s in members[np.argsort(-(train.emb[members] @ corpus.codebook[label]))[:n]]]


def shorten(text, width=120):
    return text if len(text) <= width else text[:width - 3] + "..."


def show_labels(corpus, n):
    """n typical training sentences of every label."""
    labels = corpus.splits["train"].labels
    for j in range(len(corpus.codebook)):
        print(f"label {j} ({np.sum(labels == j)} sentences, {np.mean(labels == j):.1%})")
        for text in typical_sentences(corpus, j, n):
            print(f"    {shorten(text)}")


PLANS = ("shuffled", "mean")


@torch.no_grad()
def substituted_plans(net, sd, how, seed=0):
    """Every sentence's plan as the run computes it (planned from the sentences before it), then
    'shuffled': each sentence gets the plan of a random other sentence of the split, or 'mean': the
    split's mean plan for all (any other how: the plans themselves, which a test sets against the
    run's own figure). Set against the run's own plans: what the LM draws from their content."""
    if net.plans.mode == "none":
        raise evaluation.EvalError("mode none has no plans to substitute: give a run of another "
                                   "mode")
    logits = sentence_logits(net.planner, sd) if net.plans.uses_planner else None
    table = net.plans(logits=logits, labels=sd.labels)
    if how == "mean":
        return table.mean(0).expand_as(table)
    if how == "shuffled":
        return table[torch.randperm(len(table),
                                    generator=torch.Generator().manual_seed(seed)).to(table.device)]
    return table


@torch.no_grad()
def browse(net, corpus, split="val", doc=0, top=5):
    """-> [(text, true label, [(label, probability)] * top)] for every sentence of a held-out
    document."""
    if net.planner is None:
        raise evaluation.EvalError(f"mode {net.plans.mode} has no planner to browse: give a run of "
                                   "mode hard, st, soft or gumbel")
    sp = corpus.splits[split]
    if not 0 <= doc < len(sp.doc_sent) - 1:
        raise evaluation.EvalError(f"--browse: the {split} split has documents "
                                   f"0..{len(sp.doc_sent) - 2}, not {doc}")
    lo, hi = sp.doc_sent[doc], sp.doc_sent[doc + 1]
    # row s: from sentences < s
    emb = torch.as_tensor(sp.emb[lo:hi], device=net.plans.codebook.device)
    probs = torch.softmax(net.planner(emb[None])[0].float(), -1)
    best = probs.topk(min(top, probs.shape[1]), -1)
    return [(corpus.sentence_text(split, s), int(sp.labels[s]),
             list(zip(best.indices[i].tolist(), best.values[i].tolist())))
            for i, s in enumerate(range(lo, hi))]


def print_browse(net, corpus, split, doc):
    rows = browse(net, corpus, split, doc)
    hits = sum(true == guesses[0][0] for _, true, guesses in rows)
    print(f"{split} document {doc}: {len(rows)} sentences, the planner's top guess right for "
          f"{hits}")
    for i, (text, true, guesses) in enumerate(rows):
        print(f"\n{i}. [label {true}] {shorten(' '.join(text.split()), 110)}")
        for label, prob in guesses:
            example = shorten(typical_sentences(corpus, label, 1)[0], 80)
            print(f"   {prob:6.1%}  label {label:>3} {'=' if label == true else ' '}  like: "
                  f"{example}")


# explore.py's numeric flags and their ranges: the data flags' as train.py's, and its own.
FLAG_RANGES = runtime.FLAG_RANGES + [(("labels", "browse"), lambda v: v >= 0, "zero or more")]


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", metavar="RUN",
                        help="a run folder made by train.py (its corpus, and --browse)")
    data.add_data_args(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="splits, embeddings, k-means (and the synthetic corpus)")
    parser.add_argument("--labels", type=int, metavar="N", default=0,
                        help="print N typical training sentences of every label")
    parser.add_argument("--browse", type=int, metavar="DOC",
                        help="the planner's top-5 labels for every sentence of document DOC of "
                             "--split (needs a RUN)")
    parser.add_argument("--plans", choices=PLANS,
                        help="score the RUN with every plan replaced by a random other sentence's "
                             "(shuffled) or the split's mean plan, against its own (needs a RUN)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    return parser


def plan_reliance(run, how, split):
    """What the LM draws from the plans' content: its perplexity with every plan replaced, against
    the run's own."""
    replaced = lambda net, sd: substituted_plans(net, sd, how)
    own, other = (evaluation.evaluate(run, split, replace_plans=r) for r in (None, replaced))
    print(f"{split} perplexity of {run}: {own['perplexity']:.2f} with its own plans, "
          f"{other['perplexity']:.2f} with every plan replaced ({how}) "
          f"({other['perplexity'] / own['perplexity'] - 1:+.2%})")


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    with runtime.one_line_errors(evaluation.EvalError, data.DataError):
        runtime.check_ranges(args, FLAG_RANGES)
        if args.run and (given := [k for k in ("dataset", "n_labels", "embed_dim", "seed",
                                               "synthetic_docs", "synthetic_types",
                                               "synthetic_ambiguity", "data_dir")
                                   if getattr(args, k) != parser.get_default(k)]):
            raise evaluation.EvalError(f"--{given[0].replace('_', '-')}: with a RUN the corpus is "
                                       "the one it was trained on: drop the data flags")
        if (args.browse is not None or args.plans) and args.run is None:
            raise evaluation.EvalError("--browse and --plans need a RUN: e.g. python explore.py "
                                       "out/soft-joint --browse 4")
        net, corpus = (evaluation.load_run(args.run)[::2] if args.run
                       else (None, data.load_from_args(args)))
        if args.labels:
            show_labels(corpus, args.labels)
        if args.plans:
            plan_reliance(args.run, args.plans, args.split)
        if args.browse is not None:
            print_browse(net, corpus, args.split, args.browse)
        elif not args.plans:
            print(summary(corpus))


if __name__ == "__main__":
    main()
