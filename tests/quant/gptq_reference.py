"""Slow float64 numpy transcription of the reference GPTQ (IST-DASLab/gptq) for the tests.

A per-column Python loop on the torch layout ``W[OC, IC]`` (columns are input channels), with
the quantizers of GPTQ (``quant.py::Quantizer``) and AdaDim/AWQ (``pseudo_quantize_tensor``)
written the way those references write them, plus AdaDim's per-IC column quantization
(``gptq_ada.py``). Written independently of ``quant/`` so the tests compare two codings.
"""
import numpy as np


def gptq_params(x, bits, sym=False):
  """GPTQ Quantizer.find_params over the rows of x [rows, cols]."""
  maxq = 2**bits - 1
  xmin = np.minimum(x.min(1), 0)
  xmax = np.maximum(x.max(1), 0)
  if sym:
    xmax = np.maximum(np.abs(xmin), xmax)
    neg = xmin < 0
    xmin[neg] = -xmax[neg]
  tmp = (xmin == 0) & (xmax == 0)
  xmin[tmp] = -1
  xmax[tmp] = +1
  scale = (xmax - xmin) / maxq
  zero = np.full_like(scale, (maxq + 1) / 2) if sym else np.round(-xmin / scale)
  return scale, zero


def adadim_params(x, bits):
  """AdaDim/AWQ pseudo_quantize_tensor's (scale, zero) over the rows of x."""
  maxq = 2**bits - 1
  scales = np.clip(x.max(1) - x.min(1), 1e-5, None) / maxq
  zeros = np.clip(-np.round(x.min(1) / scales), 0, maxq)
  return scales, zeros


def params(x, bits, zero_in_range, sym):
  if zero_in_range:
    return gptq_params(x, bits, sym)
  assert not sym, "AdaDim's reference never uses sym"
  return adadim_params(x, bits)


def quantize(x, scale, zero, bits):
  q = np.clip(np.round(x / scale) + zero, 0, 2**bits - 1)
  return q, scale * (q - zero)


def rtn(w_flax, bits, g, dim, zero_in_range=False, sym=False):
  """Fake-quantized Flax weight: per-OC groups along K, per-IC groups along N."""
  w = np.asarray(w_flax, np.float64)
  k, n = w.shape
  rows = w.T.reshape(-1, g) if dim == "oc" else w.reshape(-1, g)
  s, z = params(rows, bits, zero_in_range, sym)
  _, dq = quantize(rows, s[:, None], z[:, None], bits)
  return dq.reshape(n, k).T if dim == "oc" else dq.reshape(k, n)


def gptq(w_flax, h, *, bits, g, dim, act_order, static_groups, damp=0.01, block=128,
         zero_in_range=True, sym=False):
  """Returns (codes [K, N], scales, zeros, perm or None) in the QuantizedWeight layout."""
  W = np.array(w_flax, np.float64).T.copy()  # [N, K]
  H = np.array(h, np.float64).copy()
  n, k = W.shape
  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  if static_groups:
    groups = [params(W[:, i:i + g], bits, zero_in_range, sym) for i in range(0, k, g)]
  perm = np.arange(k)
  if act_order:
    perm = np.argsort(-np.diag(H), kind="stable")
    W = W[:, perm]
    H = H[perm][:, perm]
  H[np.arange(k), np.arange(k)] += damp * np.mean(np.diag(H))
  hinv = np.linalg.inv(np.linalg.cholesky(H))
  hinv = hinv.T @ hinv
  U = np.linalg.cholesky(hinv).T
  codes = np.zeros((n, k))
  dyn_s, dyn_z = [], []
  ic_s, ic_z = np.zeros((k, n // g)), np.zeros((k, n // g))
  for i1 in range(0, k, block):
    i2 = min(i1 + block, k)
    W1 = W[:, i1:i2].copy()
    Err1 = np.zeros_like(W1)
    U1 = U[i1:i2, i1:i2]
    for i in range(i2 - i1):
      c = i1 + i
      w = W1[:, i]
      d = U1[i, i]
      if dim == "oc":
        if static_groups:
          s, z = groups[perm[c] // g]
        else:
          if c % g == 0:
            s, z = params(W[:, c:c + g], bits, zero_in_range, sym)
            dyn_s.append(s)
            dyn_z.append(z)
        q, dq = quantize(w, s, z, bits)
      else:
        s, z = params(w.reshape(n // g, g), bits, zero_in_range, sym)
        ic_s[c], ic_z[c] = s, z
        q, dq = quantize(w.reshape(n // g, g), s[:, None], z[:, None], bits)
        q, dq = q.reshape(n), dq.reshape(n)
      codes[:, c] = q
      err = (w - dq) / d
      W1[:, i:] -= np.outer(err, U1[i, i:])
      Err1[:, i] = err
    W[:, i2:] -= Err1 @ U[i1:i2, i2:]
  inv = np.argsort(perm)
  if dim == "ic":
    return codes[:, inv].T, ic_s[inv], ic_z[inv], None
  if static_groups:
    return (codes[:, inv].T, np.stack([s for s, _ in groups]),
            np.stack([z for _, z in groups]), None)
  if act_order:
    return codes.T, np.stack(dyn_s), np.stack(dyn_z), perm
  return codes.T, np.stack(dyn_s), np.stack(dyn_z), None
