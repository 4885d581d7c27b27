"""`lmlab pretrain --config tiny` then `lmlab export RUN --to H`: transformers loads H with equal logits and the
same greedy tokens, and its tokenizer encodes like lmlab (BOS first, model_max_length set)."""

import torch
import transformers as tf

from lmlab import checkpoint
from lmlab.cli import main
from lmlab.generate import generate
from lmlab.tokenizer import Tokenizer


def test_pretrain_export_and_load_with_transformers(tmp_path, capsys):
    run, hf_dir = tmp_path / "run", tmp_path / "hf"
    assert main(["pretrain", "--config", "tiny", "--out", str(run), "train.max_steps=3", "train.save_steps=[]",
                 "train.eval_every=0", "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
                 "train.batch_size=2", "train.progress=false", "train.tensorboard=false"]) == 0
    assert main(["export", str(run), "--to", str(hf_dir)]) == 0
    model, _ = checkpoint.load(run)
    tok = Tokenizer.load(run / "tokenizer.json")
    hf = tf.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hft = tf.AutoTokenizer.from_pretrained(hf_dir)
    text = "the cats near the dog run"
    ids = hft(text).input_ids
    assert ids == tok.encode(text, bos=True) and hft.model_max_length == model.cfg.seq_len
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() < 1e-4
    ours = generate(model, [ids], 8, temperature=0).tokens[0]
    theirs = hf.generate(x, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_id)[0, len(ids):].tolist()
    assert ours == theirs
    assert main(["export", str(hf_dir), "--to", str(tmp_path / "again")]) == 2  # an HF folder is refused
    assert "already a Hugging Face model folder" in capsys.readouterr().err
