"""Per layer, how much an encoder's first token and its mean over real tokens say about a sentence.

For each model and each layer (0 = embeddings): the spread of the representation across dev sentences (standard
deviation over sentences, averaged over dimensions), and a linear probe's dev accuracy (logistic regression trained on
the fixed training sample that runs use, scored on the whole dev set), for the first token and for the mean over the
real tokens. A sentence-transformers checkpoint trained with mean pooling shows a near-constant first token below its
top layer: a head or an objective reading it there reads nothing (distilbench.models.pooling).

    python benchmarks/probe_pooling.py --data-dir ../shared/data/glue                       # both embedded models
    python benchmarks/probe_pooling.py --models PATH/TO/A/CACHED/TEACHER --data-dir ...     # any model folder
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

from distilbench.data.batching import subsample
from distilbench.data.tasks import get_task, load_split, resolve_data_dir
from distilbench.models.loading import resolve_model
from distilbench.models.pooling import sentence_representation


@torch.no_grad()
def features(model, tokenizer, texts: list[str], max_length: int, batch: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: first-token and mean-over-real-tokens representations of ``texts`` ([n, d] each)."""
    first: list[list[np.ndarray]] = []
    mean: list[list[np.ndarray]] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model(**enc, output_hidden_states=True)
        for k, h in enumerate(out.hidden_states):
            if k == len(first):
                first.append([])
                mean.append([])
            first[k].append(sentence_representation(h, enc["attention_mask"], "cls").numpy())
            mean[k].append(sentence_representation(h, enc["attention_mask"], "mean").numpy())
    return [np.concatenate(f) for f in first], [np.concatenate(m) for m in mean]


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, standardise: bool) -> float:
    """Dev accuracy of an L2-regularised logistic regression (C = 1). Raw features: what a head sees, at the scale it
    sees them (a near-constant vector needs huge weights, which the penalty forbids, as weight decay and a few epochs
    do for a real head). Standardised: whether the information is there at all, at any scale."""
    mu, sd = (train_x.mean(0), train_x.std(0) + 1e-8) if standardise else (0.0, 1.0)
    clf = LogisticRegression(max_iter=5000, C=1.0).fit((train_x - mu) / sd, train_y)
    return float((clf.predict((dev_x - mu) / sd) == dev_y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm-l6,mpnet-base", help="comma-separated aliases or model folders")
    ap.add_argument("--task", default="sst2", help="a single-sentence or sentence-pair classification task")
    ap.add_argument("--train-examples", type=int, default=2000, help="probe training sentences (the runs' fixed sample)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.train_examples < 2 or args.max_length < 2:
        ap.error(f"--train-examples {args.train_examples} / --max-length {args.max_length}: each must be a count >= 2")
    torch.manual_seed(0)
    task = get_task(args.task)
    data_dir = resolve_data_dir(args.data_dir)
    train = subsample(load_split(task, "train", data_dir), args.train_examples)
    dev = load_split(task, "dev", data_dir)
    majority = max(np.mean([e.label == c for e in dev]) for c in set(e.label for e in dev))
    print(f"task {task.name}: {len(train)} probe training examples, {len(dev)} dev examples, majority class "
          f"{100 * majority:.2f}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in args.models.split(","):
        start = time.perf_counter()
        path = resolve_model(name)
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        if train[0].text_b is not None:
            ap.error(f"--task {task.name} is a sentence-pair task; this probe reads single sentences (sst2 or cola)")
        texts_tr, texts_dev = [e.text_a for e in train], [e.text_a for e in dev]
        ftr, mtr = features(model, tokenizer, texts_tr, args.max_length)
        fdev, mdev = features(model, tokenizer, texts_dev, args.max_length)
        ytr, ydev = np.array([e.label for e in train]), np.array([e.label for e in dev])
        print(f"\n{name} ({len(ftr) - 1} layers; {time.perf_counter() - start:.0f} s of features)")
        print("layer  spread first  spread mean  probe first  probe mean  standardised: first   mean")
        for k in range(len(ftr)):
            acc = [100 * probe(x, ytr, xd, ydev, std) for std in (False, True) for x, xd in ((ftr[k], fdev[k]), (mtr[k], mdev[k]))]
            print(f"{k:5d}  {fdev[k].std(0).mean():12.4f}  {mdev[k].std(0).mean():11.4f}  {acc[0]:11.2f}  {acc[1]:10.2f}"
                  f"  {acc[2]:19.2f}  {acc[3]:6.2f}")


if __name__ == "__main__":
    main()
