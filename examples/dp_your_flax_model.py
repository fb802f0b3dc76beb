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
# # DP fine-tuning of your own Flax model, with ε and a membership-inference check
#
# Bring a Flax Linen classifier and your own arrays; trustml trains it with DP-SGD (ghost
# clipping), reports ε, and a loss-threshold membership-inference attack checks that the
# trained model leaks no more than ε allows. Runs in about a minute on a laptop CPU.

# %%
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import trustml
from trustml.data import tokenizers

workdir = tempfile.mkdtemp(prefix="trustml_dp_")

# %% [markdown]
# ## Your data
# Any token-id matrix `[N, T]` (0 = padding) with integer labels works. Here: the embedded
# corpus that ships with trustml, tokenized with trustml's word tokenizer.

# %%
ds = trustml.data.load_dataset(trustml.data.default_data_config("synthetic"))
tok = tokenizers.WordTokenizer.build([str(t) for t in ds.train["text"]], vocab_size=2000)


def encode(split):
  tokens, _ = tok.encode_batch([str(t) for t in split["text"]], 24)
  return tokens, np.asarray(split["label"])


(x_train, y_train), (x_test, y_test) = encode(ds.train), encode(ds.eval)
print(x_train.shape, "train rows,", ds.num_classes, "classes")

# %% [markdown]
# ## Your model
# The Model contract asks for the embedding lookup and the rest of the network as separate
# methods (fairness and canary extraction differentiate with respect to the embeddings).


# %%
class MyClassifier(nn.Module):
  vocab: int
  classes: int

  def setup(self):
    self.embed = nn.Embed(self.vocab, 32)
    self.hidden = nn.Dense(64)
    self.out = nn.Dense(self.classes)

  def embed_tokens(self, tokens):
    return self.embed(tokens)

  def pool(self, emb, mask, train=False):
    m = mask[..., None].astype(emb.dtype)
    return (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def from_embeddings(self, emb, mask, train=False):
    return self.out(nn.relu(self.hidden(self.pool(emb, mask, train))))

  def __call__(self, tokens, mask, train=False):
    return self.from_embeddings(self.embed_tokens(tokens), mask, train)


# %% [markdown]
# ## Make it private and train: ε comes back in the summary

# %%
model = trustml.models.from_flax(
  MyClassifier(tok.vocab_size, ds.num_classes),
  name="mine",
  kind="classifier",
  num_classes=ds.num_classes,
)
prepared = trustml.train.from_arrays(model, (x_train, y_train), (x_test, y_test))
config = trustml.configs.dp_nlu.get_config("eps=3")  # DP-SGD, Poisson sampling, δ = 1e-5
config.train.num_epochs = 10.0
config.train.batch_size = 256
config.privacy.virtual_batch_size = 256
summary = trustml.train.run(config, workdir, prepared=prepared)
print(f"accuracy {summary['eval/accuracy']:.3f} at ε = {summary['privacy/epsilon']:.2f}")

# %% [markdown]
# ## Membership inference: do training rows look different from held-out rows?
# Score each row by its negative loss under the trained model; the AUC of members vs
# non-members is the attack's power. (ε, δ)-DP bounds the attacker's TPR at every FPR.

# %%
ckpt = trustml.train.Checkpointer(workdir)
params = ckpt.restore_params(ckpt.latest_step(), model.init(jax.random.key(0), prepared.train))
loss_fn = jax.jit(model.per_example_loss)
n = min(len(y_train), len(y_test))
members = np.asarray(loss_fn(params, {k: v[:n] for k, v in prepared.train.items()}))
outsiders = np.asarray(loss_fn(params, {k: v[:n] for k, v in prepared.eval.items()}))
curve = trustml.attacks.metrics.roc_curve(
  -np.r_[members, outsiders], np.r_[np.ones(n), np.zeros(n)]
)
bound = trustml.attacks.metrics.dp_tradeoff_bound([0.01], summary["privacy/epsilon"], 1e-5)[0]
print(
  f"MIA AUC {curve.auc:.3f}; TPR at 1% FPR {trustml.attacks.metrics.tpr_at_fpr(curve, 0.01):.3f} "
  f"(the ε bound allows up to {bound:.3f})"
)

# %% [markdown]
# ## Accounting on its own: ε of a plan, or σ for a target ε

# %%
from trustml.privacy import accounting  # noqa: E402

event = accounting.run_event([(1.1, 14062)], sampling="poisson", sampling_rate=256 / 60000)
print("ε =", round(accounting.epsilon(event, 1e-5), 3))  # TF Privacy MNIST tutorial: 60 epochs
sigma = accounting.calibrate_noise_multiplier(
  3.0, 1e-5, schedule=[(1.0, 1000)], sampling="poisson", sampling_rate=0.01
)
print("σ for ε = 3 over 1000 steps at q = 0.01:", round(sigma, 3))
