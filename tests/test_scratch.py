"""From-scratch causal LMs (issue 21's offline teacher): the byte-level BPE tokenizer is the same in separate
processes and loses no text, model shapes parse by name or key=value (bad ones refused with one line), and a seeded
GPT-2-style model is reproducible, starts near the uniform loss ln V, and saves as a folder the CLI reads."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from distilbench.errors import UsageError
from distilbench.models.scratch import EOT, parse_config, random_causal_lm, train_bpe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VALID = REPO.parent / "shared" / "data" / "wikitext-2-tokens" / "valid.txt"
SYNTHETIC = [f" = Section {i} = \n" if i % 7 == 0 else f"the {i % 5} cats of <unk> sat , and {i * 3} dogs ran .\n"
             for i in range(400)]

SCRIPT = """
import hashlib, sys
from pathlib import Path
from distilbench.models.scratch import train_bpe
path = Path(sys.argv[1])
lines = [l + "\\n" for l in path.read_text(encoding="utf-8").split("\\n")[:1000]] if path.is_file() else None
if lines is None:
    lines = [f" = Section {i} = \\n" if i % 7 == 0 else f"the {i % 5} cats of <unk> sat , and {i * 3} dogs ran .\\n" for i in range(400)]
print(hashlib.sha256(train_bpe(lines, 1000).backend_tokenizer.to_str().encode()).hexdigest())
"""


def _lines() -> list[str]:
    if VALID.is_file():
        return [line + "\n" for line in VALID.read_text(encoding="utf-8").split("\n")[:1000]]
    return SYNTHETIC


def test_bpe_is_the_same_in_separate_processes():
    here = hashlib.sha256(train_bpe(_lines(), 1000).backend_tokenizer.to_str().encode()).hexdigest()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(VALID)], env=env, capture_output=True, text=True,
                             timeout=300, check=True).stdout.split()
        assert out[-1] == here


def test_bpe_loses_no_text_and_knows_its_end_of_text():
    tok = train_bpe(SYNTHETIC, 400)
    assert len(tok) <= 400 and tok.convert_tokens_to_ids(EOT) == 0 == tok.eos_token_id == tok.pad_token_id
    text = "unseen: ünïcödé ✓ and 12345 tabs\tand\nnewlines"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing is unknown
    assert len(tok("the cats sat", add_special_tokens=False)["input_ids"]) < len("the cats sat")  # merges were learnt
    with pytest.raises(UsageError, match="at least 257"):
        train_bpe(SYNTHETIC, 100)


def test_model_shapes_by_name_or_key_value():
    assert parse_config("gpt2-small") == {"n_layer": 12, "n_embd": 768, "n_head": 12}
    assert parse_config("gpt2-tiny, n_layer=4") == {"n_layer": 4, "n_embd": 64, "n_head": 2}
    assert parse_config("n_layer=2,n_embd=32,n_head=4,dropout=0") == {"n_layer": 2, "n_embd": 32, "n_head": 4, "dropout": 0.0}
    for bad, match in [("gpt3", "unknown model size"), ("gpt2-tiny,layers=3", "key among"), ("n_layer=two", "takes an integer"),
                       ("n_layer=2", "leaves n_embd, n_head unset"), ("gpt2-tiny,n_head=3", "multiple of n_head"),
                       ("gpt2-tiny,n_layer=0", "sizes must be >= 1")]:
        with pytest.raises(UsageError, match=match) as err:
            parse_config(bad)
        assert "\n" not in str(err.value)


def test_a_seeded_random_gpt2_is_reproducible_and_starts_near_the_uniform_loss(tmp_path):
    tok = train_bpe(SYNTHETIC, 400)
    a, b = random_causal_lm("gpt2-tiny", tok, seed=3), random_causal_lm("gpt2-tiny", tok, seed=3)
    c = random_causal_lm("gpt2-tiny", tok, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.transformer.h[0].attn.c_attn.weight, c.transformer.h[0].attn.c_attn.weight)
    assert a.config.vocab_size == len(tok) and a.config.n_layer == 2 and a.lm_head.weight is a.transformer.wte.weight
    ids = torch.tensor([tok("".join(SYNTHETIC[:20]), add_special_tokens=False)["input_ids"][:64]])
    loss = a.eval()(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - math.log(len(tok))) < 0.05 * math.log(len(tok))  # small initial weights: near-uniform predictions

    from distilbench.models.loading import load_tokenizer, model_config

    a.save_pretrained(tmp_path / "t")
    tok.save_pretrained(tmp_path / "t")
    assert model_config(str(tmp_path / "t")).architectures == ["GPT2LMHeadModel"]
    again = load_tokenizer(str(tmp_path / "t"))
    assert again("the cats sat")["input_ids"] == tok("the cats sat")["input_ids"] and again.eos_token == EOT
