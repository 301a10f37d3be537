"""The MeDiM paper's experiments on the synthetic benchmark, runnable offline on a CPU.

- :mod:`experiments.ablation`: bidirectional vs causal attention, AdaLN time vs no time input, per-layer AdaLN vs
  adaLN-single; each variant trained centrally with the same data, steps and seed, evaluated on the held-out sets.
- :mod:`experiments.downstream`: a report generator (MeDiM in image->report mode) trained on real pairs vs real
  plus jointly generated pairs; relative change of BLEU/METEOR/ROUGE-L and clinical label F1.

Run with ``python -m experiments ablation|downstream --preset tiny --out DIR`` (see ``docs/experiments.md``).
"""
