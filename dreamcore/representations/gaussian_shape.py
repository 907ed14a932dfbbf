"""The shape of one anisotropic 3D Gaussian (Kerbl et al. 2023, §4): the rotation R of its unit quaternion and its
covariance Σ = R S Sᵀ Rᵀ with S = diag(exp(log_scale)). Shared by the representation, its density field, its
density control and the splat renderer."""

from __future__ import annotations

import torch
from torch import Tensor


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Unit quaternions (w, x, y, z) [N, 4] (normalized here) → rotation matrices [N, 3, 3]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def covariance(log_scales: Tensor, quats: Tensor) -> Tensor:
    """Σ = R S Sᵀ Rᵀ [N, 3, 3]."""
    m = quat_to_rotmat(quats) * torch.exp(log_scales)[..., None, :]
    return m @ m.transpose(-1, -2)
