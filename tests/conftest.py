"""Fixtures shared by test files: a tiny synthetic setting and one out-dir trained in it."""
import pytest

import train

TINY = ["--dataset", "synthetic", "--synthetic-docs", "300", "--n-labels", "8", "--embed-dim", "16",
        "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "32",
        "--batch-size", "4", "--lm-iters", "20", "--planner-iters", "20", "--finetune-iters", "6",
        "--eval-interval", "2", "--eval-iters", "1", "--warmup-iters", "2", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_out(tmp_path_factory):
    """(flags, root): a shared out-dir whose pretrained stages later runs reuse, and one finished
    soft run."""
    root = tmp_path_factory.mktemp("tiny")
    flags = TINY + ["--out-dir", str(root / "out"), "--data-dir", str(root / "data")]
    train.main(flags + ["--mode", "soft"])
    return flags, root
