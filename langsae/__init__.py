"""Language-specific SAE features (Deng et al., ACL 2025) on Qwen3-0.6B transcoders.

One module per concern:
  config     presets and the command line shared by every stage
  data       FLORES selection / evaluation texts (bundled or FLORES+ from the hub)
  hub        Hugging Face access: token, offline mode, local caches
  model      model + SAE loading and the hook-point mapping onto HF modules
  forward    the one forward engine: batching, padding masks, capture hooks
  nu         activation statistics and nu-scores
  features   the nu stage's saved features, read back (checked for staleness) by later stages
  ablation   directional / feature ablations built from those features
  sweep      conditions, the ΔCE sweep engine and its on-disk condition store (resumable)
  stats      bootstrap confidence intervals
  section5   Section 5 aggregation: results table, Figure 5/6 data, per-language summary
  plots      figures (PNG + PDF)
  artifacts  atomic writes, run metadata, staleness checks
  toy        the small offline Qwen3 model organism and its transcoders
"""

__version__ = "0.1.0"
