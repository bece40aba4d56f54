"""LCB reproduction: expected suboptimality against dataset size across data compositions.

    python -m reports.lcb            # writes reports/lcb.md, lcb.json, lcb_bandits.png, lcb_mdp.png
    python -m reports.lcb --quick    # seconds-long smoke run into a temporary directory

Rashidinejad, Zhu, Ma, Jiao, Russell (arXiv:2103.12021) claim that pessimism (LCB) adapts to the
data composition, measured by the single-policy concentrability C*: with nearly-expert data
(C* = 1) its suboptimality falls as 1/N (the imitation rate), with poor coverage as 1/sqrt(N);
behaviour cloning (BC) is good only when the expert dominates the data (C* < 2).

Rates like these are *worst cases over instances*: on one fixed bandit every sensible method's
error eventually falls exponentially fast (the gap is fixed, the noise shrinks). So for the
bandits we take, at every N, the maximum of E[suboptimality] over an instance family with the
given C* (``rl.offline.bandits.hard_instance``: gaps 0.02..0.9, with and without rarely-played
arms, light contexts of probability 1/N), and fit the slope of that envelope on log-log axes.
The tabular MDPs are random fixed instances (the issue's setting), averaged over many MDPs; the
bandits' fixed-gap curves are kept in the JSON for contrast. Every number in lcb.md comes from
this run.
"""
from __future__ import annotations

import datetime
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from reports import common
from rl.offline import bandits as B
from rl.offline import tabular as T

C_STARS = (1.0, 1.5, 2.0, 5.0, 20.0)
# Down to 0.002: the worst gap shrinks like sqrt(1/N) (for LCB ~ b(a*) - b(decoy) ~ 0.01 at
# N = 65536, C* = 5; two equally covered arms at C* = 2 need less); a grid that stops above it
# truncates the envelope (flagged "(edge)" in the tables).
GAPS = (0.002, 0.0035, 0.006, 0.01, 0.017, 0.03, 0.05, 0.1, 0.17, 0.3, 0.5, 0.9)
RARE_FRACTIONS = (0.0, 0.3)
FIXED_GAP = 0.1  # the fixed-instance contrast (a member of GAPS)

FULL = dict(
    bandit_ns=tuple(2**k for k in range(6, 17)), bandit_seeds=1000, num_arms=10,
    cb_contexts=10, gaps=GAPS,
    mdp_ns=tuple(2**k for k in range(7, 17)), num_mdps=200, mdp_states=20, mdp_actions=10,
    gamma=0.9, dirichlet=0.1, vi_iters=150)
QUICK = dict(FULL, bandit_ns=(64, 512, 4096), bandit_seeds=40, gaps=(0.1, 0.5),
             mdp_ns=(128, 2048), num_mdps=6, vi_iters=60)
SLOPE_FROM = 2048  # the "large N" fit uses N >= this


# ------------------------------------------------------------------------------------------------
# Bandits
# ------------------------------------------------------------------------------------------------


def bandit_curves(cfg, num_contexts: int, key) -> dict:
  """``{c_star: {method: [N, gaps, rares]}}`` of Monte-Carlo E[suboptimality]."""
  shape = (len(cfg["bandit_ns"]), len(cfg["gaps"]), len(RARE_FRACTIONS))
  # One flat batch axis over (N, gap, rare) rather than nested vmaps: a third of the compile time.
  n_grid, gap_grid, rare_grid = (jnp.asarray(a.reshape(-1), jnp.float32) for a in np.meshgrid(
      cfg["bandit_ns"], cfg["gaps"], RARE_FRACTIONS, indexing="ij"))

  def one(c_star, n, gap, rare):
    inst = B.hard_instance(c_star, n, num_contexts=num_contexts, num_arms=cfg["num_arms"],
                           gap=gap, rare_fraction=rare)
    return B.expected_suboptimality(key, inst, n, cfg["bandit_seeds"])

  grid = jax.jit(jax.vmap(one, (None, 0, 0, 0)))
  out = {}
  for c in C_STARS:
    t0 = time.time()
    res = grid(jnp.float32(c), n_grid, gap_grid, rare_grid)
    out[c] = {m: np.asarray(v).reshape(shape) for m, v in res.items()}
    print(f"  {'MAB' if num_contexts == 1 else 'CB'} C*={c:g}: {time.time() - t0:.0f}s",
          flush=True)
  return out


# ------------------------------------------------------------------------------------------------
# Tabular MDPs
# ------------------------------------------------------------------------------------------------


def mdp_curves(cfg, key) -> tuple[dict, dict]:
  """Random MDPs whose uniform behaviour policy reaches C* >= max(C_STARS); per C*, the
  mean over MDPs (one dataset per MDP and N) of each method's suboptimality, ``[N]``."""
  S, A, gamma = cfg["mdp_states"], cfg["mdp_actions"], cfg["gamma"]
  k_mdp, k_data = jax.random.split(key)

  @jax.jit
  @jax.vmap
  def setup(k):
    mdp = T.random_mdp(k, S, A, gamma, cfg["dirichlet"])
    pi_star = T.optimal_q(mdp).argmax(1)
    one_hot = T.one_hot_policy(pi_star, A)
    c_uniform = T.concentrability(T.occupancy(mdp, one_hot),
                                  T.occupancy(mdp, T.behaviour_policy(one_hot, 1.0)))
    return mdp, pi_star, one_hot, c_uniform

  candidates = jax.random.split(k_mdp, 3 * cfg["num_mdps"])
  mdps, pi_star, one_hot, c_uniform = setup(candidates)
  keep = np.where(np.asarray(c_uniform) >= max(C_STARS))[0][:cfg["num_mdps"]]
  meta = {"candidates": int(len(candidates)), "kept": int(len(keep)),
          "kept_fraction_of_drawn": float(np.mean(np.asarray(c_uniform) >= max(C_STARS)))}
  mdps, pi_star, one_hot = jax.tree.map(lambda a: a[keep], (mdps, pi_star, one_hot))

  @jax.jit
  @jax.vmap
  def behaviour(mdp, one_hot, c):
    lam = T.lambda_for_concentrability(mdp, one_hot, c)
    mu = T.occupancy(mdp, T.behaviour_policy(one_hot, lam))
    return lam, mu, T.concentrability(T.occupancy(mdp, one_hot), mu)

  def one(k, mdp, ps, mu, n):
    kd, kp = jax.random.split(k)
    data = T.sample_dataset(kd, mdp, mu, n)
    pols = T.policies(kp, data, gamma, 1.0 / n, iters=cfg["vi_iters"])
    return {m: T.suboptimality(mdp, a, ps) for m, a in pols.items()}

  # One flat batch over (N, MDP) pairs (nested vmaps compile far slower).
  num_n, num_m = len(cfg["mdp_ns"]), len(keep)
  n_idx, m_idx = (a.reshape(-1) for a in np.meshgrid(np.arange(num_n), np.arange(num_m),
                                                    indexing="ij"))
  ns = jnp.asarray(np.asarray(cfg["mdp_ns"], np.float32)[n_idx])
  keys = jax.random.split(k_data, num_m)[m_idx]

  @jax.jit
  def curves(mdps, pi_star, mu):
    take = lambda a: a[m_idx]
    res = jax.vmap(one)(keys, jax.tree.map(take, mdps), take(pi_star), take(mu), ns)
    return {m: v.reshape(num_n, num_m) for m, v in res.items()}

  out = {}
  for c in C_STARS:
    t0 = time.time()
    lam, mu, c_got = behaviour(mdps, one_hot, jnp.full((len(keep),), c))
    res = curves(mdps, pi_star, mu)
    out[c] = {m: np.asarray(v).mean(1) for m, v in res.items()}
    meta[f"lambda_c{c:g}"] = [float(np.min(lam)), float(np.median(lam)), float(np.max(lam))]
    meta[f"c_star_reached_c{c:g}"] = [float(np.min(c_got)), float(np.max(c_got))]
    print(f"  MDP C*={c:g}: {time.time() - t0:.0f}s", flush=True)
  return out, meta


# ------------------------------------------------------------------------------------------------
# Slopes, tables, plots
# ------------------------------------------------------------------------------------------------


def fit_slope(ns, e, n_min=0) -> float | None:
  """Least-squares slope of log E on log N over the points with N >= n_min and E > 0; None if
  fewer than 3 such points (the curve has hit exactly 0: faster than any power)."""
  ns, e = np.asarray(ns, float), np.asarray(e, float)
  ok = (ns >= n_min) & (e > 0)
  if ok.sum() < 3:
    return None
  return float(np.polyfit(np.log(ns[ok]), np.log(e[ok]), 1)[0])


def envelope(curves_c) -> dict:
  """Worst case over the instance family (gaps x rare fractions): ``{method: [N]}``."""
  return {m: v.reshape(v.shape[0], -1).max(1) for m, v in curves_c.items()}


def worst_gap(curves_c, gaps) -> dict:
  g = np.asarray(gaps)
  return {m: [float(g[i // len(RARE_FRACTIONS)]) for i in v.reshape(v.shape[0], -1).argmax(1)]
          for m, v in curves_c.items()}


def cset(cs) -> str:
  return "{" + ", ".join(f"{c:g}" for c in cs) + "}"


def fmt_slope(s):
  return "→0" if s is None else f"{s:+.2f}"


def fmt_e(x):
  return "0" if x == 0 else f"{x:.2g}"


EXPECTED_BANDIT = {
    "lcb": {1.0: "-1", 1.5: "-1 to -1/2", 2.0: "-1 to -1/2", 5.0: "-1/2", 20.0: "-1/2"},
    "bc": {1.0: "best", 1.5: "best", 2.0: "flat", 5.0: "flat", 20.0: "flat"},
    "greedy": {1.0: "= BC (data hold a* only)", **{c: "hurt by rare arms" for c in C_STARS[1:]}},
}


def _gap_cell(gap, e, gaps):
  if e == 0:
    return "-"
  return f"{gap:g} (edge)" if gap == min(gaps) else f"{gap:g}"


def bandit_table(ns, curves, gaps):
  lines = [f"| C* | method | slope (all N) | slope (N ≥ {SLOPE_FROM}) | E at N={ns[0]} | "
           f"E at N={ns[-1]} | worst gap at N={ns[-1]} | expected |",
           "|---:|---|---:|---:|---:|---:|---:|---|"]
  rows = {}
  for c in C_STARS:
    env = envelope(curves[c])
    wg = worst_gap(curves[c], gaps)
    for m in B.METHODS:
      s_all, s_big = fit_slope(ns, env[m]), fit_slope(ns, env[m], SLOPE_FROM)
      rows[(c, m)] = dict(slope_all=s_all, slope_large=s_big, e=env[m].tolist(),
                          worst_gap=wg[m])
      lines.append(f"| {c:g} | {m} | {fmt_slope(s_all)} | {fmt_slope(s_big)} | "
                   f"{fmt_e(env[m][0])} | {fmt_e(env[m][-1])} | "
                   f"{_gap_cell(wg[m][-1], env[m][-1], gaps)} | "
                   f"{EXPECTED_BANDIT[m][c]} |")
  return lines, rows


def mdp_table(ns, curves):
  show = [0, len(ns) // 3, 2 * len(ns) // 3, len(ns) - 1]
  show = sorted(set(show))
  lines = ["| C* | method | " + " | ".join(f"E at N={ns[i]}" for i in show) +
           " | slope (fit over N with E > 0) | last N with E > 0 |",
           "|---:|---|" + "---:|" * len(show) + "---:|---:|"]
  rows = {}
  for c in C_STARS:
    for m in T.METHODS:
      e = curves[c][m]
      pos = np.where(e > 0)[0]
      last = int(ns[pos[-1]]) if len(pos) else None
      s = fit_slope(ns, e)
      rows[(c, m)] = dict(e=e.tolist(), slope=s, last_positive_n=last)
      lines.append(f"| {c:g} | {m} | " + " | ".join(fmt_e(e[i]) for i in show) +
                   f" | {fmt_slope(s)} | {last if last else '-'} |")
  return lines, rows


def plot_bandits(plt, ns, cb, mab, path):
  fig, axes = plt.subplots(2, len(C_STARS), figsize=(4 * len(C_STARS), 7), sharex=True)
  colors = {"lcb": "tab:blue", "greedy": "tab:orange", "bc": "tab:green"}
  for row, (label, curves) in enumerate((("contextual, S=10", cb), ("multi-armed", mab))):
    for j, c in enumerate(C_STARS):
      ax = axes[row, j]
      env = envelope(curves[c])
      for m in B.METHODS:
        e = env[m]
        ok = e > 0
        ax.loglog(np.asarray(ns)[ok], e[ok], "o-", ms=3, color=colors[m], label=m)
      anchor = env["lcb"][0] if env["lcb"][0] > 0 else max(v[0] for v in env.values())
      if anchor > 0:
        x = np.asarray(ns, float)
        ax.loglog(x, anchor * (x / x[0]) ** -0.5, ":", color="gray", lw=1, label="N^-1/2")
        ax.loglog(x, anchor * (x / x[0]) ** -1.0, "--", color="gray", lw=1, label="N^-1")
      ax.set_title(f"{label}, C*={c:g}", fontsize=9)
      if row == 1:
        ax.set_xlabel("N")
      if j == 0:
        ax.set_ylabel("max over family of E[subopt]")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_mdp(plt, ns, curves, path):
  fig, axes = plt.subplots(1, len(C_STARS), figsize=(4 * len(C_STARS), 3.6), sharey=True)
  colors = {"vi_lcb": "tab:blue", "plugin": "tab:orange", "bc": "tab:green"}
  for j, c in enumerate(C_STARS):
    ax = axes[j]
    for m in T.METHODS:
      e = curves[c][m]
      ok = e > 0
      ax.loglog(np.asarray(ns)[ok], e[ok], "o-", ms=3, color=colors[m], label=m)
    x = np.asarray(ns, float)
    ax.loglog(x, 1.0 * (x / x[0]) ** -0.5, ":", color="gray", lw=1, label="N^-1/2")
    ax.set_title(f"random MDPs, C*={c:g}", fontsize=9)
    ax.set_xlabel("N")
  axes[0].set_ylabel("E[J(pi*) - J(pi^)]  (V_max = 10)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------
# What we see (every sentence computed from the run)
# ------------------------------------------------------------------------------------------------


def observations(ns, cb_rows, mab_rows, mdp_rows, mdp_ns, num_pairs, gaps, sa_mdp):
  out = []

  def s(rows, c, m, key="slope_large"):
    return rows[(c, m)][key]

  def e_last(rows, c, m):
    return rows[(c, m)]["e"][-1]

  lcb1 = s(cb_rows, 1.0, "lcb")
  out.append(f"- **Contextual, C*=1**: LCB's envelope falls with slope {fmt_slope(lcb1)} for "
             f"N ≥ {SLOPE_FROM} (expected -1: the S/N term of contexts missing from the data). "
             + ("Agrees." if lcb1 is not None and abs(lcb1 + 1) < 0.15 else "**Disagrees.**"))
  for c in (5.0, 20.0):
    v = s(cb_rows, c, "lcb")
    out.append(f"- **Contextual, C*={c:g}**: LCB slope {fmt_slope(v)} (expected about -1/2, "
               "a little flatter from the log N in the bound with delta = 1/N). "
               + ("Agrees." if v is not None and abs(v + 0.5) < 0.15 else "**Disagrees.**"))
  v15, v2 = s(cb_rows, 1.5, "lcb"), s(cb_rows, 2.0, "lcb")
  edge2 = cb_rows[(2.0, "lcb")]["worst_gap"][-1] == min(gaps)
  out.append(f"- **Contextual, C*=1.5**: LCB slope {fmt_slope(v15)}: the optimal arm has twice "
             "the data of any other arm, so in the heavy context LCB errs only with a "
             "polynomially small probability and the missing light contexts (1/N) dominate. "
             f"**C*=2**: slope {fmt_slope(v2)}"
             + (" (worst gap at the grid's edge: the envelope is truncated, the true one is at "
                "least this flat)" if edge2 else "")
             + ": the family now holds a decoy exactly as covered as the optimal arm (rare "
             "fraction 0), and two equally covered arms are told apart only at the 1/sqrt(N) "
             "rate. The paper's contextual rate sqrt(S(C*-1)/N) + S/N (unverified) is 1/sqrt(N) "
             "for every C* > 1; this family is easier than its worst case at C*=1.5.")
  for c in C_STARS:
    best = min(B.METHODS, key=lambda m: e_last(cb_rows, c, m))
    ties = [m for m in B.METHODS if e_last(cb_rows, c, m) <= e_last(cb_rows, c, best) * 1.05]
    out.append(f"- Contextual, C*={c:g}: lowest worst-case error at N={ns[-1]}: "
               f"{' = '.join(ties)} ({fmt_e(e_last(cb_rows, c, best))}).")
  bc_flat = [c for c in C_STARS if (s(cb_rows, c, "bc") is not None
                                    and s(cb_rows, c, "bc") > -0.1)]
  out.append(f"- BC's envelope is flat (slope > -0.1) at C* ∈ {cset(bc_flat)}: "
             "once C* ≥ 2 the family contains a suboptimal arm played at least as often as the "
             "optimal one, and BC copies it whatever N is. Expected flat for C* ≥ 2. "
             + ("Agrees." if bc_flat == [2.0, 5.0, 20.0] else "**Disagrees.**"))
  hurt = [c for c in C_STARS if e_last(cb_rows, c, "greedy") > 1.5 * e_last(cb_rows, c, "lcb")]
  better = [c for c in C_STARS[1:]
            if e_last(cb_rows, c, "greedy") < e_last(cb_rows, c, "lcb")]
  out.append(f"- Greedy (empirical best) is worse than LCB by more than 1.5x at N={ns[-1]} for "
             f"C* ∈ {cset(hurt)} (slope "
             + ", ".join(f"{fmt_slope(s(cb_rows, c, 'greedy'))}" for c in hurt)
             + ": a rare arm with a lucky reward wins). "
             + (f"It is *better* than LCB at C* ∈ {cset(better)}: there the optimal arm is "
                "poorly covered and LCB's penalty on it costs more than the rare arms' winner's "
                "curse costs greedy. 'Greedy hurt by rare arms' holds at C* ∈ "
                f"{cset(hurt)}; **disagrees** at C* ∈ {cset(better)}." if better else "Agrees."))
  b1 = [math.sqrt(math.log(2 * num_pairs * n) / 2) for n in (ns[0], ns[-1])]
  out.append(f"- At C*=1 LCB ({fmt_e(e_last(cb_rows, 1.0, 'lcb'))}) trails BC "
             f"({fmt_e(e_last(cb_rows, 1.0, 'bc'))}) by a constant factor: with delta = 1/N an arm "
             f"seen once has b = sqrt(log(2|S||A|N)/2) = {b1[0]:.2f} (N={ns[0]}) to {b1[1]:.2f} "
             f"(N={ns[-1]}) > 1, so its score r^ - b is below the unseen arms' -1 and LCB picks an "
             "unseen arm in a light context seen once. Same rate, worse constant.")
  m1 = [mab_rows[(c, m)]["e"][-1] for c in (1.0,) for m in B.METHODS]
  out.append("- **Multi-armed bandit** (one context): at C*=1 every method's error is "
             f"{'exactly 0' if max(m1) == 0 else 'not 0: ' + str(m1)} (the data contain only "
             "the optimal arm), so there is no 1/N regime: the 1/N rate needs contexts that can "
             "be missing from the data. At C*=1.5 BC's error is "
             f"{fmt_e(mab_rows[(1.5, 'bc')]['e'][-1])} at N={ns[-1]} and LCB's "
             f"{fmt_e(mab_rows[(1.5, 'lcb')]['e'][-1])}; at C*=20 LCB's slope is "
             f"{fmt_slope(s(mab_rows, 20.0, 'lcb'))}.")
  # MDPs
  def zero_from(e):
    e = np.asarray(e)
    for i in range(len(e)):
      if np.all(e[i:] == 0):
        return mdp_ns[i]
    return None

  out.append("- **Tabular MDPs** (fixed random instances, averaged): first N from which every "
             "MDP's error is exactly 0 (the optimal policy recovered on its support): "
             + "; ".join(
                 f"C*={c:g}: " + ", ".join(f"{m} {zero_from(mdp_rows[(c, m)]['e']) or '-'}"
                                           for m in T.METHODS) for c in C_STARS)
             + " ('-': not within the N range).")
  out.append("  On a fixed MDP the gaps are fixed, so once every state on the optimal policy's "
             "path has enough data the error is exactly 0: the curves fall faster than any "
             "power, and a fitted slope mostly measures where that happens. The 1/sqrt(N) "
             "worst-case rate does not show up on fixed instances; it needs gaps that shrink "
             "with N, as in the bandit family above.")
  last = {c: {m: mdp_rows[(c, m)]["e"][-1] for m in T.METHODS} for c in C_STARS}
  worse_plugin = [c for c in C_STARS if last[c]["plugin"] > last[c]["vi_lcb"]]
  grows = [c for c in C_STARS
           if max(mdp_rows[(c, "plugin")]["e"]) > mdp_rows[(c, "plugin")]["e"][0]]
  line = (f"- Plug-in VI ends above VI-LCB at C* ∈ {cset(worse_plugin)} (at N={mdp_ns[-1]})")
  if grows:
    c0 = grows[0]
    line += (f", and at C* ∈ {cset(grows)} its error first *grows* with N (C*={c0:g}: "
             f"{fmt_e(mdp_rows[(c0, 'plugin')]['e'][0])} at N={mdp_ns[0]}, max "
             f"{fmt_e(max(mdp_rows[(c0, 'plugin')]['e']))}): more data reveals more rarely-"
             "tried actions, some of which look good by chance")
  out.append(line + ".")
  small = {c: min(T.METHODS, key=lambda m: mdp_rows[(c, m)]["e"][0]) for c in C_STARS}
  worst_small = [c for c in C_STARS
                 if max(T.METHODS, key=lambda m: mdp_rows[(c, m)]["e"][0]) == "vi_lcb"]
  n_unit = [50 * math.log(2 * sa_mdp * n) for n in (mdp_ns[0], mdp_ns[-1])]
  out.append("- At the smallest N the best MDP method is "
             + ", ".join(f"{small[c]} (C*={c:g})" for c in C_STARS)
             + f". VI-LCB is the worst method at small N for C* ∈ {cset(worst_small)}: its "
             "Hoeffding penalty V_max sqrt(log(2SA/delta)/2n) stays above one unit of reward "
             f"(V_max/10) until a pair has 50 log(2SA/delta) = {n_unit[0]:.0f} (N={mdp_ns[0]}) to "
             f"{n_unit[1]:.0f} (N={mdp_ns[-1]}) samples, so it falls back on the few "
             "well-covered actions.")
  bc20 = mdp_rows[(20.0, "bc")]
  out.append(f"- BC in the MDPs is *not* flat at C* ≥ 2 (C*=20: {fmt_e(bc20['e'][0])} → "
             f"{fmt_e(bc20['e'][-1])}): with pi_b = (1-lam) pi* + lam uniform the optimal action "
             "stays the most played one in every state for any lam < 1, so BC is consistent; it "
             "is only slow when lam is close to 1. The 'BC flat beyond C*=2' expectation is "
             "about behaviour policies whose mode is suboptimal; this one has none. "
             "**Disagrees** with the issue's expectation for the MDP setting, as it should.")
  return out


def main():
  args = common.arg_parser(__doc__).parse_args()
  cfg = QUICK if args.quick else FULL
  out = common.out_dir(args)
  t_start = time.time()
  key = jax.random.key(0)
  k_cb, k_mab, k_mdp = jax.random.split(key, 3)
  ns = list(cfg["bandit_ns"])
  print("contextual bandits", flush=True)
  cb = bandit_curves(cfg, cfg["cb_contexts"], k_cb)
  print("multi-armed bandits", flush=True)
  mab = bandit_curves(cfg, 1, k_mab)
  print("tabular MDPs", flush=True)
  mdp, mdp_meta = mdp_curves(cfg, k_mdp)
  seconds = time.time() - t_start

  cb_lines, cb_rows = bandit_table(ns, cb, cfg["gaps"])
  mab_lines, mab_rows = bandit_table(ns, mab, cfg["gaps"])
  mdp_lines, mdp_rows = mdp_table(list(cfg["mdp_ns"]), mdp)
  fixed = {}
  if FIXED_GAP in cfg["gaps"]:
    gi = list(cfg["gaps"]).index(FIXED_GAP)
    for c in C_STARS:
      fixed[c] = {m: mab[c][m][:, gi, 1].tolist() for m in B.METHODS}  # rare fraction 0.3

  plt = common.pyplot()
  plot_bandits(plt, ns, cb, mab, out / "lcb_bandits.png")
  plot_mdp(plt, list(cfg["mdp_ns"]), mdp, out / "lcb_mdp.png")

  key_str = lambda rows: {f"C*={c:g}/{m}": v for (c, m), v in rows.items()}
  common.write_json(out / "lcb.json", name="lcb",
                    config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                    results={
      "c_stars": list(C_STARS), "rare_fractions": list(RARE_FRACTIONS), "seconds": seconds,
      "contextual": key_str(cb_rows), "multi_armed": key_str(mab_rows),
      "multi_armed_fixed_gap": {"gap": FIXED_GAP, "rare_fraction": 0.3,
                                "e": {f"C*={c:g}": v for c, v in fixed.items()}},
      "mdp": key_str(mdp_rows), "mdp_meta": mdp_meta})

  command = "python -m reports.lcb" + (" --quick" if args.quick else "")
  fixed_line = ""
  if fixed:
    e = fixed[20.0]["lcb"]
    mid = len(e) // 2
    zero = next((n for n, x in zip(ns, e) if x == 0), None)
    tail = (f"it is exactly 0 from N={zero} on" if zero else
            f"over the last doubling of N it falls by a factor {e[-2] / e[-1]:.3g} (an N^-1/2 "
            "rate would be 1.41)")
    fixed_line = (f"For contrast, one *fixed* multi-armed instance (gap {FIXED_GAP}, C*=20): "
                  f"LCB's error goes {fmt_e(e[0])} (N={ns[0]}) → {fmt_e(e[mid])} (N={ns[mid]}) "
                  f"→ {fmt_e(e[-1])} (N={ns[-1]}); {tail}. Fixed gaps give no power law; all "
                  "fixed-gap curves are in `lcb.json`.")
  md = [
      "# LCB: pessimism across data compositions (Rashidinejad et al. 2021)",
      "",
      f"Generated by `{command}` on {datetime.date.today().isoformat()} "
      f"({jax.default_backend()}, jax {jax.__version__}) in {seconds / 60:.1f} min; raw numbers "
      "in `lcb.json`. Code: `rl/offline/bandits.py`, `rl/offline/tabular.py`.",
      "",
      "## Setting",
      "",
      f"- **Bandits.** {cfg['num_arms']} arms, Bernoulli rewards, delta = 1/N, "
      f"{cfg['bandit_seeds']} datasets per point, N = {ns[0]}..{ns[-1]}. Methods: LCB "
      "(argmax r^ - sqrt(log(2|S||A|/delta)/2N), unseen arms r^=0, b=1), greedy (empirical best "
      "among seen arms), BC (most played). Ties at random.",
      "- **Instance family** with a given C* (`hard_instance`): behaviour mu(a*) = 1/C*; the rest "
      "on one decoy arm, or 70% decoy + 30% over 8 rare arms; r(a*) = (1+gap)/2, all others "
      f"(1-gap)/2, gap ∈ {{{', '.join(f'{g:g}' for g in cfg['gaps'])}}}. Contextual: "
      f"{cfg['cb_contexts']} contexts, 9 of probability 1/N each, one heavy context. Plotted and "
      "fitted: the maximum over the family of E[suboptimality] (the minimax-style envelope the "
      "rates are about); the gap attaining it is in the tables, marked '(edge)' when it is the "
      "grid's smallest gap (the envelope may then be truncated).",
      f"- **Tabular MDPs.** {mdp_meta['kept']} random MDPs "
      f"(S={cfg['mdp_states']}, A={cfg['mdp_actions']}, gamma={cfg['gamma']}, "
      f"P(.|s,a) ~ Dirichlet({cfg['dirichlet']}), r ~ U(0,1)), kept if the uniform policy's C* "
      f"≥ {max(C_STARS):g} ({100 * mdp_meta['kept_fraction_of_drawn']:.0f}% of those drawn); "
      "behaviour (1-lam) pi* + lam uniform with lam solved per MDP for each C*; one dataset per "
      f"MDP and N = {cfg['mdp_ns'][0]}..{cfg['mdp_ns'][-1]}; VI-LCB with a Hoeffding penalty "
      "V_max sqrt(log(2SA/delta)/2N(s,a)), delta = 1/N, values clipped at 0, no data splitting; "
      f"plug-in VI; BC. {cfg['vi_iters']} value-iteration sweeps. Suboptimality rho.(V* - V^pi) "
      "evaluated exactly.",
      "- Sufficient statistics are drawn exactly (multinomial counts, binomial rewards, "
      "multinomial next states), so the cost does not grow with N.",
      "",
      "## Contextual bandit (S = 10): slopes of the worst-case envelope",
      "",
      *cb_lines,
      "",
      "## Multi-armed bandit",
      "",
      *mab_lines,
      "",
      fixed_line,
      "",
      "![bandits](lcb_bandits.png)",
      "",
      "## Tabular MDPs (random fixed instances)",
      "",
      *mdp_lines,
      "",
      "![mdp](lcb_mdp.png)",
      "",
      "## What we see",
      "",
      *observations(ns, cb_rows, mab_rows, mdp_rows, list(cfg["mdp_ns"]),
                    cfg["cb_contexts"] * cfg["num_arms"], cfg["gaps"],
                    cfg["mdp_states"] * cfg["mdp_actions"]),
      "",
      "## What was checked against the paper",
      "",
      "The stored copies of arXiv:2103.12021 we could search show its abstract and introduction "
      "only. Verified there: the single-policy (weak) concentrability framework, LCB, the 1/N "
      "rate for nearly-expert data against 1/sqrt(N) in general, adaptive optimality with at "
      "least two contexts, 'almost adaptive' in MDPs, and behaviour cloning's 1/N on expert data "
      "(citing Rajaraman et al. 2020). **Not verified** (recalled, implemented as recalled): the "
      "exact penalty sqrt(log(2|A|/delta)/2N) and the unseen-arm convention r^=0, b=1; "
      "the C* = 1/mu(a*) form; the contextual rate sqrt(S(C*-1)/N) + S/N; VI-LCB's penalty "
      "constant, log factor and data splitting; the MDP rate sqrt(S C*/((1-gamma)^5 N)).",
  ]
  (out / "lcb.md").write_text("\n".join(md) + "\n")
  print("wrote", out / "lcb.md")


if __name__ == "__main__":
  main()
