"""
Write text with a trained run, planning each sentence as it starts: the planner reads the sentences
so far, the run's estimator turns its logits into the plan, and the LM writes the sentence with it.
Whether the LM follows its plans shows in the label each new sentence realises (compare.py counts it
over many documents).

    python sample.py out/soft-joint                         # 5 sentences, a new document
    python sample.py out/soft-joint --prompt "The river rises in the mountains north of the city."
    python sample.py out/oracle --force-labels 8,8,47,47    # dictate the labels: 4 sentences
"""

import argparse
import itertools
import math
import re

import numpy as np
import torch

import corpora
import data
import runtime
from eval import EvalError, load_run

SENTENCE_END = re.compile(r"""([.!?]|…)["'”’»)\]]*\s*$""")  # as corpora's sentence ends


def next_plan(net, corpus, history, forced=None):
    """-> (planned label or None, plan vector or None) for the sentence after the texts in
    history."""
    plans, codebook = net.plans, net.plans.codebook
    if forced is None:
        return plan_each(net, corpus, history, then=True)[-1]
    if plans.mode in ("none", "fixed", "uniform"):
        raise EvalError(f"mode {plans.mode} takes no label: --force-labels needs a run of mode "
                        "oracle, hard, st, soft or gumbel")
    if not 0 <= forced < len(codebook):
        raise EvalError(f"--force-labels: there is no label {forced}, the labels are "
                        f"0..{len(codebook) - 1}")
    return forced, codebook[forced]


def plan_each(net, corpus, texts, then=False):
    """-> [(planned label or None, plan vector or None)] for each of texts, planned from the texts
    before it (a mode that reads the true label gets each text's own), and with then=True for the
    sentence after them too: one pass of the planner."""
    plans, dim, device = net.plans, net.plans.codebook.shape[1], net.plans.codebook.device
    if then and (plans.mode == "oracle" or plans.truth_weight):
        raise EvalError("this run's plans need the true label of a sentence not yet written: "
                        "give --force-labels")
    emb = torch.as_tensor(corpus.embedder.embed_texts(texts) if texts else np.zeros((0, dim)))
    labels = torch.as_tensor(corpus.label(emb.numpy()) if texts else [], dtype=torch.long)
    labels = torch.cat([labels, labels.new_zeros(int(then))]).to(device)  # then: no label needed
    if not plans.uses_planner:  # none: no vector; fixed, uniform: theirs; oracle: the true label's
        return [(None, plans(labels=label)) for label in labels]
    # row s of the planner's output reads texts < s only: a last row appended (then) is never
    # read, and its output is the plan of the sentence after them all
    emb = torch.cat([emb.float(), torch.zeros(int(then), dim)]).to(device)
    logits = net.planner(emb[None])[0]
    return [(int(z.argmax()), plans(logits=z, labels=y)) for z, y in zip(logits, labels)]


def prompt_sentences(prompt, one_space):
    """-> (the prompt's finished sentences, its unfinished last one or ""); one_space: its
    whitespace made one space, as in a closed vocabulary's corpus (the synthetic one)."""
    prompt = " ".join(prompt.split()) if one_space else prompt.strip()
    given = data.split_sentences(prompt) if prompt else []
    return (given[:-1], given[-1]) if given and not SENTENCE_END.search(given[-1]) else (given, "")


@torch.no_grad()
def sample(net, corpus, n_sentences, prompt="", force=(), temperature=0.8, top_k=50, seed=0,
           max_tokens=60):
    """Write n_sentences after prompt, planning each sentence as it starts.

    -> [(planned label or None, realised label, text)] per new sentence. Before each sentence the
    planner reads the sentences so far, embedded as the corpus was, and the run's estimator turns
    its logits into the plan; force[i], if given, dictates the label of the i-th new sentence. A
    prompt that ends mid-sentence: the LM finishes that sentence first, as the first new one
    (planned from the sentences before it; its text and label are the whole sentence's).
    """
    if len(force) < n_sentences and (net.plans.mode == "oracle" or net.plans.truth_weight):
        raise EvalError(f"this run's plans need the true label of a sentence not yet written: "
                        f"give --force-labels for all {n_sentences} sentences")
    device, block = net.lm.wte.weight.device, net.lm.config.block_size
    enc, g = data.tokenizer(), torch.Generator(device).manual_seed(seed)
    given, opened = prompt_sentences(prompt, one_space=corpus.vocab is not None)
    given_tokens = [enc.encode_ordinary(text) for text in given]
    opened_tokens = enc.encode_ordinary(opened)
    if corpus.vocab is not None:
        corpora.refuse_unknown_tokens(corpus.vocab, enc,
                                      itertools.chain(*given_tokens, opened_tokens))
    eot = int(corpus.to_rows([data.EOT])[0])  # a new document is not what was asked for
    history, idx, plans, out = [], [data.EOT], [], []

    def add(token, vec):
        plans.append(vec)  # the plan at the position before token: the one that predicts it
        idx.append(token)

    for text, tokens, (_, vec) in zip(given, given_tokens, plan_each(net, corpus, given)):
        for token in tokens:
            add(token, vec)
        history.append(text)
    for i in range(n_sentences):
        label, vec = next_plan(net, corpus, history, force[i] if i < len(force) else None)
        start = len(idx)
        for token in opened_tokens if i == 0 else ():
            add(token, vec)
        for _ in range(max_tokens):  # the LM sees the last block of tokens and their plans only
            plan_fn = None if vec is None else lambda _: torch.stack((plans + [vec])[-block:])[None]
            rows = torch.as_tensor(corpus.to_rows(idx[-block:]), device=device)[None]
            row = net.lm.generate(rows, 1, temperature, top_k, plan_fn, g, never=eot)[0, -1]
            add(int(corpus.to_ids(int(row))), vec)
            if SENTENCE_END.search(enc.decode(idx[start:])):
                break
        text = enc.decode(idx[start:])
        out.append((label, int(corpus.label(corpus.embedder.embed_texts([text]))[0]), text))
        history.append(text)
    return out


def print_samples(args):
    try:
        force = [int(x) for x in args.force_labels.split(",")] if args.force_labels else []
    except ValueError:
        raise EvalError(f"--force-labels takes comma-separated label numbers, got "
                        f"{args.force_labels!r}") from None
    sentences = args.sentences or len(force) or 5
    if len(force) > sentences:
        raise EvalError(f"--force-labels gives {len(force)} labels for --sentences {sentences}: "
                        "give at most one label a sentence")
    net, _, corpus = load_run(args.run, runtime.resolve_device(args.device))
    rows = sample(net, corpus, sentences, args.prompt, force, args.temperature, args.top_k,
                  args.seed)
    # an unfinished sentence of the prompt is in the first row
    print("".join(prompt_sentences(args.prompt, one_space=corpus.vocab is not None)[0]))
    for planned, realised, text in rows:
        print(f"[planned {'-' if planned is None else planned:>3} | realised {realised:>3}] "
              f"{text.strip()}")
    if rows[0][0] is not None:
        hits = sum(p == r for p, r, _ in rows)
        print(f"realised label = planned label for {hits} of {len(rows)} sentences "
              f"({hits / len(rows):.0%})")


# the numeric flags and their ranges, as runtime.FLAG_RANGES
FLAG_RANGES = [(("sentences", "top_k"), lambda v: v >= 1, "at least 1"),
               (("seed",), lambda v: 0 <= v < 2**32, "from 0 to 4294967295"),
               (("temperature",), lambda v: 0 <= v < math.inf,
                "zero (always the likeliest token) or a positive number")]


def make_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run folder (or its ckpt.pt) made by train.py")
    p.add_argument("--sentences", type=int,
                   help="how many sentences to write (default: one a label of --force-labels, "
                        "else 5)")
    p.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    p.add_argument("--force-labels", default="",
                   help="dictate the labels of the new sentences, e.g. 3,17,5")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="as train.py: a GPU if there is one")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    with runtime.one_line_errors(EvalError, data.DataError):
        runtime.check_ranges(args, FLAG_RANGES)
        print_samples(args)


if __name__ == "__main__":
    main()
