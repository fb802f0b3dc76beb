# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A fairness audit of a trained classifier: bias AUCs, APS, WEAT and SEAT
#
# Train (or load) a classifier, then ask: does it score texts that mention women differently
# from texts that mention men (bias AUCs), does its prediction move with gendered words (APS),
# and do its embeddings associate gender with intents (WEAT on word vectors, SEAT on sentences)?

# %%
import tempfile

import jax
import numpy as np

import trustml
from trustml.fairness import association, group_metrics

workdir = tempfile.mkdtemp(prefix="trustml_fair_")

# %% [markdown]
# ## A trained classifier (here: trained now on the embedded corpus, 2 epochs)

# %%
config = trustml.configs.nlu.get_config()
config.train.num_epochs = 2.0
summary = trustml.train.run(config, f"{workdir}/classifier")
params, prepared = trustml.train.load_params(config, f"{workdir}/classifier")
model, tok = prepared.model, prepared.tokenizer

# %% [markdown]
# ## Bias AUCs (Borkan et al.): one intent as the positive class, groups = who a text mentions

# %%
positive = prepared.dataset.label_names.index("send_message")
logits = trustml.train.evaluate.predict_logits(model, params, prepared.eval)
scores = np.asarray(jax.nn.softmax(logits, -1))[:, positive]
labels = (np.asarray(prepared.eval["label"]) == positive).astype(int)
mentions = np.asarray(prepared.dataset.eval["mention_gender"])
in_groups = np.stack([mentions == 0, mentions == 1], 1)
aucs = group_metrics.bias_aucs(
  labels, scores, in_groups, group_names=["mentions a man", "mentions a woman"]
)
print({k: np.round(v, 3).tolist() for k, v in aucs.items()})

# %% [markdown]
# ## WEAT on the model's word vectors and SEAT on its sentence encodings

# %%
table = np.asarray(model.embedding_table(params))
male = [w for w in ("he", "him", "his", "dad", "brother", "son") if tok.token_to_id(w) > 3]
female = [w for w in ("she", "her", "hers", "mom", "sister", "daughter") if tok.token_to_id(w) > 3]
k = min(len(male), len(female))
a_words = [w for w in ("message", "text", "tell", "call") if tok.token_to_id(w) > 3]
b_words = [w for w in ("alarm", "wake", "weather", "drive") if tok.token_to_id(w) > 3]


def vectors(words):
  return table[[tok.token_to_id(w) for w in words]]


w = association.weat(vectors(male[:k]), vectors(female[:k]), vectors(a_words), vectors(b_words))
print(f"WEAT effect size {w.effect_size:.3f}, p = {w.p_value:.3f}")
test = {
  "X": [f"tell {x} that dinner is ready" for x in male[:k]],
  "Y": [f"tell {y} that dinner is ready" for y in female[:k]],
  "A": [f"send a {a} now" for a in a_words],
  "B": [f"set the {b} now" for b in b_words],
}
s = association.seat(model, params, tok, test, max_len=int(config.text.max_len))
print(f"SEAT effect size {s.effect_size:.3f}, p = {s.p_value:.3f}")

# %% [markdown]
# ## APS (Krishna et al.): how much predictions move with the protected attribute
# One call trains the task model and a protected-status model and reports APS and the
# counterfactual gap (`configs/aps.py`; `smoke` keeps it to seconds).

# %%
aps = trustml.fairness.run(trustml.configs.aps.get_config("smoke"), f"{workdir}/aps")
print(f"APS {aps['fairness/aps']:.4g}, counterfactual gap {aps['fairness/counterfactual_gap']:.4g}")
