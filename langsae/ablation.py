"""Ablations of SAE features at one layer, at every position.

Two modes:
  directional (the paper's, after Arditi et al. 2024): on the residual output of block L,
      h <- h - Q Q^T h, Q an orthonormal basis (QR) of the chosen features' *unit* decoder
      directions W_dec[f] / |W_dec[f]|.
  feature (transcoder-native): at the SAE's write point (the MLP output for a transcoder),
      out <- out - sum_f a_f(x) W_dec[f], with a_f recomputed from the SAE's read point
      (the MLP input) with the saved encoder row, bias and JumpReLU threshold if any. The
      reconstruction error stays in place. Refused for a TopK SAE (`check_feature_mode`).
Both are built from the compact per-feature weights of langsae.features.LayerFeatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from langsae.errors import UserError
from langsae.features import TOPK_WHY, LayerFeatures, feature_activations
from langsae.model import HookPoint, hook_point

MODES = ("directional", "feature")


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [d, r] of the span of the rows of `directions` [k, d], each first scaled to
    unit norm.

    QR of the unit directions; a (numerically) rank-deficient set falls back to an SVD so
    that no spurious direction enters the basis.
    """
    if directions.shape[0] == 0:
        return directions.new_zeros(directions.shape[1], 0)
    norms = directions.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise UserError(
            "a chosen feature has an all-zero decoder direction; it cannot be ablated directionally"
        )
    unit = (directions / norms).T  # [d, k]
    q, r = torch.linalg.qr(unit)
    diag = r.diagonal().abs()
    if bool((diag > 1e-5).all()):
        return q
    u, s, _ = torch.linalg.svd(unit, full_matrices=False)
    return u[:, s > 1e-5 * s.max()]


def project_out(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """h - Q Q^T h along the last dimension, computed in fp32: h [..., d], basis Q [d, r]."""
    hf = h.float()
    return (hf - (hf @ basis) @ basis.T).to(h.dtype)


@dataclass
class Ablation:
    """One condition's edit at its hook point; `apply(out, sublayer_input)` returns the edited output.

    out: [B, T, d_out] at `hook`; sublayer_input: [B, T, d_in] at `hook.sublayer_input()` (the MLP
    input when `hook` is an MLP output), as `forward.edit_output` passes it by default.
    directional: `basis` Q [d, r]; feature: W_dec [k, d_out], W_enc [k, d_in], b_enc, threshold [k],
    and whether the encoder reads the hook point itself (an SAE that reads where it writes: residual
    or MLP-output) or its sublayer's input (transcoder).
    An ablation of no features is the identity (`is_identity`).
    """

    hook: HookPoint
    mode: str
    basis: torch.Tensor | None = None
    W_dec: torch.Tensor | None = None
    W_enc: torch.Tensor | None = None
    b_enc: torch.Tensor | None = None
    threshold: torch.Tensor | None = None
    input_bias: torch.Tensor | None = None
    reads_output: bool = False

    @property
    def is_identity(self) -> bool:
        n = self.basis.shape[1] if self.mode == "directional" else self.W_dec.shape[0]
        return n == 0

    def apply(self, out: torch.Tensor, sublayer_input: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return out
        if self.mode == "directional":
            return project_out(out, self.basis)
        x = out if self.reads_output else sublayer_input
        acts = feature_activations(x, self.W_enc, self.b_enc, self.threshold, self.input_bias)
        return (out.float() - acts @ self.W_dec).to(out.dtype)


def check_feature_mode(lf: LayerFeatures) -> None:
    """Refuse feature mode for a TopK SAE, which directional mode handles unchanged.

    Its a_f(x) is f's pre-activation only where f is among the top k of all d_sae pre-activations at that
    position (TOPK_WHY), so subtracting it needs the full encoder at every position, not the few saved
    rows; and what "removing f" should mean there is itself open (the k-th feature after f moves up into
    the top k in the SAE's own reconstruction). A refusal is honest where a ReLU of the saved row is not.
    """
    if lf.topk is not None:
        raise UserError(
            f"feature-mode ablation is not defined for layer {lf.layer}'s SAE (architecture topk, "
            f"k={lf.topk}): {TOPK_WHY}; use --mode directional"
        )


def make_ablation(
    lf: LayerFeatures, features: Sequence[int], mode: str, device: str | torch.device = "cpu"
) -> Ablation:
    """Build the ablation of `features` (SAE feature ids) at layer lf.layer."""
    if mode not in MODES:
        raise UserError(f"unknown ablation mode {mode!r}; choose {' or '.join(MODES)}")
    features = list(dict.fromkeys(int(f) for f in features))
    rows = lf.rows(features) if features else torch.zeros(0, dtype=torch.long)
    if mode == "directional":
        basis = orthonormal_basis(lf.W_dec[rows]).to(device)
        return Ablation(HookPoint(lf.layer, "block", "output"), mode, basis=basis)
    check_feature_mode(lf)
    read, write = hook_point(lf.hook_in), hook_point(lf.hook_out)
    if read == write:
        reads_output = True
    elif read == write.sublayer_input():  # what edit_output hands to `apply` beside the output
        reads_output = False
    else:
        raise UserError(
            "feature ablation needs the SAE to read the input or output of the module it writes; "
            f"got {lf.hook_in} -> {lf.hook_out}"
        )
    threshold = None if lf.threshold is None else lf.threshold[rows].to(device)
    return Ablation(
        write,
        mode,
        W_dec=lf.W_dec[rows].to(device),
        W_enc=lf.W_enc[rows].to(device),
        b_enc=lf.b_enc[rows].to(device),
        threshold=threshold,
        reads_output=reads_output,
        input_bias=None if lf.input_bias is None else lf.input_bias.to(device),
    )
