"""Why the LM-CORE LAMA reader did not copy a given gold fact, and what makes it copy (docs/results/checks/
lmcore_reader_copy.md). Run at commit 1b64c13 (before the fix), seed 0, one thread per process, two processes at
a time on the 2-core development machine:

    python3 docs/results/checks/lmcore_reader_copy.py MODE STEPS VOCAB

MODE: base (loss on the answer only, as before), swap (half the examples counterfactual), prompt (loss on the
probe text after <sep> too), swapprompt (both; what e4bc833 adopted). It monkeypatches GPTReader.batch for the
prompt loss; e4bc833 put the same targets behind GPTReader(prompt_loss=True).
"""
import random, sys, time
from pathlib import Path
import numpy as np, torch


def log(*a):
    print(*a, flush=True)  # a diagnosis script: its output is the record


torch.set_num_threads(1)
from lmlab.methods.knowledge import experiment_lmcore as E
from lmlab.methods.knowledge.lmcore import GPTReader, evaluate, train_reader, training_example, probe_example, verbalise, oracle_triples
from lmlab.methods.knowledge.kg import kg_from_probes, Probe, Triple
mode, steps = sys.argv[1], int(sys.argv[2]); vocab = int(sys.argv[3])
c = E.LMCoreConfig(); folder = Path("/work/shared/data/knowledge/lama")
probes = E.lama_probes(folder, c.lama_per_relation)
seed=0; rng = random.Random(seed)
subjects = sorted({p.subject for p in probes}); rng.shuffle(subjects)
n_test, n_dev = int(len(subjects)*c.lama_test_frac), max(1,int(len(subjects)*c.lama_dev_frac))
test_subj, dev_subj = set(subjects[:n_test]), set(subjects[n_test:n_test+n_dev])
train_p = [p for p in probes if p.subject not in test_subj|dev_subj]
dev_p = [p for p in probes if p.subject in dev_subj][:200]
kg = kg_from_probes(probes); train_kg = kg_from_probes(train_p)
distract = E.distractor_facts(probes, c.lama_distractors, random.Random(seed+11))
E.add_facts(kg, (t for ts in distract.values() for t in ts), kg.templates)
E.add_facts(train_kg, (t for p in train_p for t in distract[p.subject]), kg.templates)
texts = [train_kg.verbalise(t) for t in train_kg]
torch.manual_seed(0)
import lmlab.methods.knowledge.lmcore as L
from lmlab.model import IGNORE_INDEX
if "prompt" in mode:
    orig = L.GPTReader.batch
    def batch(self, examples):
        idx, tgt = orig(self, examples)
        for i in range(idx.shape[0]):
            row = idx[i].tolist()
            s = row.index(self.sep_id)
            nxt = torch.tensor(row[s+1:] + [self.tok.pad_id])
            mask = (tgt[i, s:] == IGNORE_INDEX) & (nxt != self.tok.pad_id)
            tgt[i, s:][mask] = nxt[mask]
        return idx, tgt
    L.GPTReader.batch = batch
reader = GPTReader.create(texts, "bpe", vocab, c.lama_layers, c.lama_d_model, c.n_heads, seq_len=256)
log(len(train_p), "train probes", len(dev_p), "dev")
ex = training_example(train_kg, train_p[0], c.k, random.Random(0), train_kg.triples)
log(repr(ex.context), "|", repr(ex.prompt), "|", repr(ex.answer))
log([reader.tok.decode([i]) for i in reader.encode(ex.context)])
log([reader.tok.decode([i]) for i in reader.encode(" "+ex.answer)])
objects = {}
for t in train_kg: objects.setdefault(t.relation, set()).add(t.tail)
objects = {r: sorted(v) for r, v in objects.items()}
triples = train_kg.triples
def sample(r):
    out = []
    for p in r.sample(train_p, c.batch):
        if mode.startswith("swap") and r.random() < 0.5:
            new = r.choice(objects[p.relation])
            # counterfactual: move this fact to another object of its relation, in context and answer
            p2 = Probe(p.subject, p.relation, new, p.template)
            gold = Triple(p.subject, p.relation, new)
            own = [t for t in train_kg.about(p.subject) if t.relation != p.relation]
            ctx = [gold] + ([r.choice(own)] if own and r.random() < 0.5 else [r.choice(triples)])
            r.shuffle(ctx)
            out.append(probe_example(p2, verbalise(train_kg, ctx)))
        else:
            out.append(training_example(train_kg, p, c.k, r, triples))
    return out
t0=time.time()
for phase in range(steps // 1000):
    losses = train_reader(reader, sample, 1000, lr=c.lr, seed=phase)
    r = evaluate(reader, kg, dev_p, "oracle", c.k)
    log(f"{mode} {(phase+1)*1000} steps loss {np.mean(losses[-50:]):.3f} dev gold-copy {r['accuracy']:.3f} t={time.time()-t0:.0f}s")
trip = oracle_triples(kg, dev_p, c.k)
bad = 0
for p, ts, y in zip(dev_p, trip, r["predictions"]):
    if y.strip().lower() != p.answer.strip().lower() and bad < 25:
        bad += 1; log(p.relation, "|", verbalise(kg, ts), "|", p.prompt(), "| gold:", p.answer, "| pred:", y)
