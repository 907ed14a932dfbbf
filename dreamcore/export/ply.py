"""3D Gaussian Splatting ``.ply`` files (the layout of Kerbl et al.'s reference code, which splat viewers read).

One binary little-endian ``vertex`` element with float properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..3(K−1)−1 opacity scale_0..2 rot_0..3``: positions, zero normals, the DC
SH coefficient per channel, the remaining K − 1 = (d+1)² − 1 coefficients channel-major (all of red's, then
green's, then blue's), the opacity *logit*, *log* scales and the quaternion (w, x, y, z) unnormalized.
With a scene transform (p_scene = (p − c)·s) the file is in the reference's own frame: positions mapped back,
log-scales − log s. The exporter ``ply`` writes ``model.ply`` from a Gaussian representation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.export.exporters import Exporter, ExportSource
from dreamcore.files import atomic_write_bytes
from dreamcore.meshes.asset import SceneTransform
from dreamcore.registry import register


def property_names(n_rest: int) -> list[str]:
    """Property order for ``n_rest`` = K − 1 higher-order SH coefficients per channel."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(path: str | Path, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Tensor,
              sh_dc: Tensor, sh_rest: Tensor, transform: Optional[SceneTransform] = None) -> Path:
    """Write N Gaussians (means [N, 3], log_scales [N, 3], quats [N, 4], opacity_logits [N], sh_dc [N, 1, 3],
    sh_rest [N, K−1, 3]) atomically to ``path``."""
    means, log_scales = means.detach().float().cpu(), log_scales.detach().float().cpu()
    if transform is not None:
        means = transform.to_original(means)
        log_scales = log_scales - math.log(transform.scale)
    n, n_rest = means.shape[0], sh_rest.shape[1]
    cols = [means, torch.zeros(n, 3), sh_dc.detach().float().cpu().reshape(n, 3),
            sh_rest.detach().float().cpu().transpose(1, 2).reshape(n, 3 * n_rest),
            opacity_logits.detach().float().cpu().reshape(n, 1), log_scales, quats.detach().float().cpu()]
    data = torch.cat(cols, 1).numpy().astype("<f4")
    names = property_names(n_rest)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in names) + "end_header\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, header.encode("ascii") + data.tobytes())
    return path


def read_ply(path: str | Path, transform: Optional[SceneTransform] = None) -> dict[str, Tensor]:
    """The tensors :func:`write_ply` takes (means, log_scales, quats, opacity_logits, sh_dc, sh_rest), mapped into
    the scene frame by ``transform`` when given."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise DreamcoreError(f"{path}: not a PLY file")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise DreamcoreError(f"{path}: only binary little-endian Gaussian PLY files are supported")
    n = next(int(ln.split()[2]) for ln in lines if ln.startswith("element vertex"))
    props = [ln.split()[2] for ln in lines if ln.startswith("property")]
    if any(ln.split()[1] != "float" for ln in lines if ln.startswith("property")):
        raise DreamcoreError(f"{path}: expected float properties")
    n_rest = sum(p.startswith("f_rest_") for p in props) // 3
    if props != property_names(n_rest):
        raise DreamcoreError(f"{path}: not the 3DGS property layout (got {props[:12]}...)")
    body = raw[end + len(b"end_header\n"):]
    data = torch.from_numpy(np.frombuffer(body, dtype="<f4", count=n * len(props)).reshape(n, len(props)).copy())
    i = 0

    def take(k: int) -> Tensor:
        nonlocal i
        out = data[:, i:i + k]
        i += k
        return out

    means, _, dc, rest, op, ls, q = take(3), take(3), take(3), take(3 * n_rest), take(1), take(3), take(4)
    if transform is not None:
        means = transform.to_scene(means)
        ls = ls + math.log(transform.scale)
    return {"means": means, "log_scales": ls, "quats": q, "opacity_logits": op[:, 0], "sh_dc": dc[:, None, :],
            "sh_rest": rest.reshape(n, 3, n_rest).transpose(1, 2).contiguous()}


@register("exporter", "ply")
class PLYExporter(Exporter):
    """``model.ply``: the Gaussians themselves (3DGS layout), written from the representation, not a mesh."""

    writes_mesh = False

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, source: ExportSource) -> dict[str, Path]:
        s = source.splats()
        return {"ply": write_ply(Path(run_dir) / "model.ply", s.means, s.log_scales, s.quats, s.opacity_logits,
                                 s.sh_dc, s.sh_rest, s.transform)}
