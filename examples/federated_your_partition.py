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
# # Federated training: your own partition, uniform vs activity-based client selection
#
# Split your rows into clients (Dirichlet label skew, Dirichlet quantity skew), look at what
# each sampler would pick, then train the same federated model with uniform and with
# activity-based selection (on the embedded corpus's natural users: one client per user).

# %%
import tempfile

import numpy as np

import trustml
from trustml.federated import partition, selection

workdir = tempfile.mkdtemp(prefix="trustml_fed_")

# %% [markdown]
# ## Your own partition
# Any labels `[N]` work: here the embedded corpus's intent labels, 40 clients. Label skew
# (α = 0.3) gives each client a few intents; quantity skew (β = 0.5) gives unequal sizes.

# %%
ds = trustml.data.load_dataset(trustml.data.default_data_config("synthetic"))
labels = np.asarray(ds.train["label"])
for part in (
  partition.dirichlet_label({"train": labels}, num_clients=40, alpha=0.3, seed=0),
  partition.quantity_skew({"train": len(labels)}, num_clients=40, beta=0.5, seed=0),
):
  stats = partition.statistics(part, labels)
  print({k: stats[k] for k in ("size_min", "size_max", "label_entropy_mean")})

# %% [markdown]
# ## What uniform and activity-based selection would sample (10 clients per round)

# %%
sizes = part.sizes("train")
for name in ("uniform", "activity"):
  sampler = selection.Sampler(name=name, num_clients_per_round=10)
  pi = selection.inclusion_probabilities(sampler, sizes)
  heavy = sizes >= np.quantile(sizes, 0.75)
  print(f"{name:8s}: P(a client in the top quarter by size is picked) = {pi[heavy].mean():.2f}")

# %% [markdown]
# ## Train with each sampler (10 rounds of 10 clients; `rounds=` and `per_round=` scale it up)

# %%
results = {}
for name in ("uniform", "activity"):
  config = trustml.configs.fed_selection.get_config(f"sampler={name},rounds=10,per_round=10")
  summary = trustml.federated.run(config, f"{workdir}/{name}")
  results[name] = summary["eval/accuracy"]
print({k: round(v, 3) for k, v in results.items()})
