"""APS closed forms on linear models, options, masking and vocabulary checks."""

import jax
import numpy as np
import pytest

from tests.fairness import linear_models
from trustml.core.validation import ConfigError
from trustml.fairness import sensitivity

V, D, T, B = 20, 5, 6, 7


@pytest.fixture(scope="module")
def setup():
  task = linear_models.linear_model(3)
  prot = linear_models.linear_model(2)
  tp = linear_models.linear_params(0, V, D, 3)
  pp = linear_models.linear_params(1, V, D, 2)
  rng = np.random.default_rng(2)
  tokens = rng.integers(4, V, size=(B, T)).astype(np.int32)
  lengths = np.array([6, 3, 1, 5, 6, 2, 4])
  mask = np.arange(T)[None] < lengths[:, None]
  tokens = np.where(mask, tokens, 0)
  weight = np.ones(B, np.float32)
  weight[-1] = 0.0  # a padding example
  batch = {"tokens": tokens, "mask": mask, "label": np.zeros(B, np.int32), "weight": weight}
  return task, prot, tp, pp, batch


def _softmax(z):
  z = z - z.max()
  return np.exp(z) / np.exp(z).sum()


def closed_form(tp, pp, batch, opts: sensitivity.ApsOptions):
  """PS per example for mean-pooled linear models, in float64, by the chain rule by hand."""
  tp, pp = linear_models.to_numpy(tp), linear_models.to_numpy(pp)
  out = []
  for i in range(B):
    m = batch["mask"][i].astype(np.float64)
    n = m.sum()
    e = tp["embed"]["embedding"][batch["tokens"][i]]  # [T, D]; shared table shape, own values
    e_p = pp["embed"]["embedding"][batch["tokens"][i]]

    def reduced_jac(emb, W, b, outputs, m=m, n=n):
      z = (emb * m[:, None]).sum(0) / n @ W + b
      p = _softmax(z)
      # d logit_c / d e_td = m_t W_dc / n ; d p_c / d e_td = p_c (W_dc - Σ_k p_k W_dk) m_t / n
      g = W if outputs == "logits" else p[None] * (W - (W * p[None]).sum(1, keepdims=True))
      jac = np.einsum("t,dc->ctd", m / n, g)  # [C, T, D]
      red = {
        "grad_input": np.einsum("ctd,td->ct", jac, emb),
        "sum": jac.sum(-1),
        "l1": np.abs(jac).sum(-1),
        "l2": np.sqrt((jac**2).sum(-1)),
        "per_dimension": jac.reshape(jac.shape[0], -1),
      }[opts.reduction]
      return red, (z if outputs == "logits" else p)

    jt, ft = reduced_jac(e, tp["W"], tp["b"], opts.outputs)
    jp, fp = reduced_jac(e_p, pp["W"], pp["b"], opts.outputs)
    v = np.abs(jp[np.argmax(fp)])
    v = {"l1": v / v.sum(), "max": v / v.max(), "none": v}[opts.normalize]
    probs = ft if opts.outputs == "probs" else _softmax(ft)
    w = {
      "predicted": np.eye(3)[np.argmax(ft)],
      "probs": probs,
      "uniform": np.full(3, 1 / 3),
    }[opts.class_weighting]
    ps = w @ np.abs(jt) @ v if opts.abs_of == "jacobian" else abs(w @ jt @ v)
    out.append(ps * batch["weight"][i])
  return np.array(out)


@pytest.mark.parametrize(
  "opts",
  [
    sensitivity.ApsOptions(),
    sensitivity.ApsOptions(outputs="logits"),
    sensitivity.ApsOptions(reduction="sum", abs_of="score", class_weighting="probs"),
    sensitivity.ApsOptions(reduction="l1", normalize="max", class_weighting="uniform"),
    sensitivity.ApsOptions(reduction="l2", normalize="none", outputs="logits"),
    sensitivity.ApsOptions(reduction="per_dimension"),
    sensitivity.ApsOptions(reduction="grad_input"),
  ],
)
def test_ps_closed_form_linear(setup, opts):
  task, prot, tp, pp, batch = setup
  fn = sensitivity.make_sensitivity_fn(task, prot, opts)
  got = np.asarray(fn(tp, pp, batch))
  want = closed_form(tp, pp, batch, opts)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)
  assert got[-1] == 0.0  # weight-0 row
  assert (want[:-1] > 0).all()


def test_aps_is_weighted_mean_and_padding_ignored(setup):
  task, prot, tp, pp, batch = setup
  aps, per_ex = sensitivity.accumulated_prediction_sensitivity(task, tp, prot, pp, [batch, batch])
  want = closed_form(tp, pp, batch, sensitivity.ApsOptions())[:-1]
  np.testing.assert_allclose(per_ex, np.concatenate([want, want]), rtol=2e-4)
  assert aps == pytest.approx(want.mean(), rel=2e-4)


def test_default_is_the_jacobian_magnitude_not_grad_input(setup):
  """Audit D3: the default PS is wᵀ|∂f/∂e|v (l1 over D), which scales with the embedding
  parametrisation; grad × input (kept as an option) does not."""
  task, prot, tp, pp, batch = setup
  assert sensitivity.ApsOptions().reduction == "l1"
  scaled = {"embed": {"embedding": tp["embed"]["embedding"] * 2}, "W": tp["W"] / 2, "b": tp["b"]}
  aps = {}
  for red in ("l1", "grad_input"):
    o = sensitivity.ApsOptions(reduction=red)
    a1, _ = sensitivity.accumulated_prediction_sensitivity(task, tp, prot, pp, [batch], o)
    a2, _ = sensitivity.accumulated_prediction_sensitivity(task, scaled, prot, pp, [batch], o)
    aps[red] = (a1, a2)
  assert aps["l1"][1] == pytest.approx(aps["l1"][0] / 2, rel=1e-4)  # same function, half APS
  assert aps["grad_input"][1] == pytest.approx(aps["grad_input"][0], rel=1e-4)
  default, _ = sensitivity.accumulated_prediction_sensitivity(task, tp, prot, pp, [batch])
  assert default == pytest.approx(aps["l1"][0])


def test_protected_weights_ignore_padding_tokens(setup):
  task, prot, tp, pp, batch = setup
  ex = {k: v[1] for k, v in batch.items()}  # length 3
  fn = jax.jit(lambda p, e: sensitivity.protected_weights(prot, p, e, sensitivity.ApsOptions()))
  v = np.asarray(fn(pp, ex))
  assert np.all(v[3:] == 0) and v.sum() == pytest.approx(1.0, rel=1e-5)


def test_vocabulary_mismatch_rejected(setup):
  task, prot, tp, _, batch = setup
  pp_small = linear_models.linear_params(1, V - 3, D, 2)
  with pytest.raises(ConfigError, match="vocabulary"):
    sensitivity.accumulated_prediction_sensitivity(task, tp, prot, pp_small, [batch])


def test_nan_parameters_fail_loudly(setup):
  task, prot, tp, pp, batch = setup
  bad = {"embed": {"embedding": tp["embed"]["embedding"].at[:, 0].set(np.nan)}, "W": tp["W"],
         "b": tp["b"]}  # fmt: skip
  with pytest.raises(ConfigError, match="prediction sensitivity PS"):
    sensitivity.accumulated_prediction_sensitivity(task, bad, prot, pp, [batch])


def test_invalid_options_rejected():
  with pytest.raises(ConfigError, match="aps.reduction"):
    sensitivity.ApsOptions(reduction="max").validate()
  with pytest.raises(ConfigError, match="aps.class_weighting"):
    sensitivity.ApsOptions(class_weighting="true").validate()
