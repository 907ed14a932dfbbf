"""Writers of test model files the way other tools write them: a minimal glTF 2.0 builder (our own, so each
feature and each defect can be produced on purpose) and small helpers for OBJ/MTL, PLY and textures."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
CTYPE = {np.dtype("int8"): 5120, np.dtype("uint8"): 5121, np.dtype("int16"): 5122, np.dtype("uint16"): 5123,
         np.dtype("uint32"): 5125, np.dtype("float32"): 5126}
KIND = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}

# a unit quad in z = 0 facing +Z: TL, TR, BR, BL; glTF UVs (v down) put the image's top-left at TL
QUAD_POS = np.array([[-0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, -0.5, 0], [-0.5, -0.5, 0]], np.float32)
QUAD_UV = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
QUAD_IDX = np.array([0, 2, 1, 0, 3, 2], np.uint16)


def corner_png(path: Path, size: int = 2) -> Path:
    """An image: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    img = Image.fromarray(np.array([[RED, GREEN], [BLUE, YELLOW]], np.uint8)).resize((size, size), Image.NEAREST)
    img.save(path)
    return path


def png_bytes(size: int = 2) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.array([[RED, GREEN], [BLUE, YELLOW]], np.uint8)).resize((size, size), Image.NEAREST).save(
        buf, format="PNG")
    return buf.getvalue()


class Gltf:
    """Build a glTF 2.0 document with one binary buffer; write it as .glb, .gltf + .bin or .gltf (base64)."""

    def __init__(self) -> None:
        self.doc: dict = {"asset": {"version": "2.0", "generator": "dreamcore tests"}, "buffers": [],
                          "bufferViews": [], "accessors": [], "meshes": [], "nodes": [], "materials": [],
                          "scenes": [{"nodes": []}], "scene": 0}
        self.bin = bytearray()

    def view(self, data: bytes, stride: Optional[int] = None) -> int:
        self.bin.extend(b"\0" * (-len(self.bin) % 4))
        v = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if stride:
            v["byteStride"] = stride
        self.bin.extend(data)
        self.doc["bufferViews"].append(v)
        return len(self.doc["bufferViews"]) - 1

    def accessor(self, array, normalized: bool = False, stride: Optional[int] = None, **extra) -> int:
        a = np.ascontiguousarray(array)
        a2 = a.reshape(len(a), -1)
        data = a2.tobytes()
        if stride:  # interleave padding after each element
            elem = a2.shape[1] * a2.dtype.itemsize
            data = b"".join(a2[i].tobytes() + b"\xee" * (stride - elem) for i in range(len(a2)))
        acc = {"bufferView": self.view(data, stride), "componentType": CTYPE[a.dtype], "count": len(a2),
               "type": KIND[a2.shape[1]], **extra}
        if normalized:
            acc["normalized"] = True
        if a.dtype == np.float32 and a2.shape[1] == 3:
            acc["min"], acc["max"] = a2.min(0).tolist(), a2.max(0).tolist()
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def material(self, factor=(1, 1, 1, 1), texture: Optional[int] = None, transform: Optional[dict] = None,
                 tex_coord: int = 0) -> int:
        pbr: dict = {"baseColorFactor": list(factor), "metallicFactor": 0.0}
        if texture is not None:
            info: dict = {"index": texture}
            if tex_coord:
                info["texCoord"] = tex_coord
            if transform is not None:
                info["extensions"] = {"KHR_texture_transform": transform}
                self.doc.setdefault("extensionsUsed", []).append("KHR_texture_transform")
            pbr["baseColorTexture"] = info
        self.doc["materials"].append({"pbrMetallicRoughness": pbr})
        return len(self.doc["materials"]) - 1

    def texture(self, png: bytes, uri: Optional[str] = None) -> int:
        image = {"uri": uri} if uri else {"bufferView": self.view(png), "mimeType": "image/png"}
        self.doc.setdefault("images", []).append(image)
        self.doc.setdefault("textures", []).append({"source": len(self.doc["images"]) - 1})
        return len(self.doc["textures"]) - 1

    def primitive(self, positions, indices=None, uv=None, color=None, material=None, mode=None, **attrs) -> dict:
        prim: dict = {"attributes": {"POSITION": self.accessor(np.asarray(positions, np.float32))}}
        if indices is not None:
            prim["indices"] = self.accessor(np.asarray(indices))
        if uv is not None:
            prim["attributes"]["TEXCOORD_0"] = self.accessor(np.asarray(uv, np.float32))
        if color is not None:
            color = np.asarray(color)
            prim["attributes"]["COLOR_0"] = self.accessor(color, normalized=color.dtype != np.float32)
        for k, v in attrs.items():
            prim["attributes"][k] = v
        if material is not None:
            prim["material"] = material
        if mode is not None:
            prim["mode"] = mode
        return prim

    def mesh(self, *primitives: dict) -> int:
        self.doc["meshes"].append({"primitives": list(primitives)})
        return len(self.doc["meshes"]) - 1

    def node(self, root: bool = True, **fields) -> int:
        self.doc["nodes"].append(fields)
        index = len(self.doc["nodes"]) - 1
        if root:
            self.doc["scenes"][0]["nodes"].append(index)
        return index

    def _finish(self, uri: Optional[str]) -> dict:
        doc = json.loads(json.dumps(self.doc))
        doc["buffers"] = [{"byteLength": len(self.bin)}]
        if uri is not None:
            doc["buffers"][0]["uri"] = uri
        return {k: v for k, v in doc.items() if v != []}

    def write_glb(self, path: Path, doc: Optional[dict] = None, version: int = 2) -> Path:
        doc = doc or self._finish(None)
        text = json.dumps(doc).encode()
        text += b" " * (-len(text) % 4)
        binary = bytes(self.bin) + b"\0" * (-len(self.bin) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        out = struct.pack("<III", 0x46546C67, version, total)
        out += struct.pack("<II", len(text), 0x4E4F534A) + text
        out += struct.pack("<II", len(binary), 0x004E4942) + binary
        path.write_bytes(out)
        return path

    def write_gltf(self, path: Path, embed: bool = True, bin_name: str = "buffer.bin") -> Path:
        if embed:
            doc = self._finish("data:application/octet-stream;base64," + base64.b64encode(bytes(self.bin)).decode())
        else:
            doc = self._finish(bin_name)
            (path.parent / bin_name).write_bytes(bytes(self.bin))
        path.write_text(json.dumps(doc))
        return path

    def quad(self, material: Optional[int] = None, **node) -> int:
        """A quad mesh on a root node (with the given node fields)."""
        mesh = self.mesh(self.primitive(QUAD_POS, QUAD_IDX, uv=QUAD_UV, material=material))
        return self.node(mesh=mesh, **node)


def write_ply(path: Path, vertices: np.ndarray, faces: Optional[list] = None, fmt: str = "ascii",
              vertex_props: Optional[dict] = None, face_props: Optional[dict] = None, comments=()) -> Path:
    """A PLY file with x y z (float32) plus extra vertex properties {name: array} (their dtypes are kept),
    face index lists (any lengths) plus extra face properties."""
    names = {np.dtype("float32"): "float", np.dtype("float64"): "double", np.dtype("uint8"): "uchar",
             np.dtype("int32"): "int", np.dtype("uint16"): "ushort"}
    vertex_props = dict(vertex_props or {})
    face_props = dict(face_props or {})
    cols = [("x", vertices[:, 0].astype(np.float32)), ("y", vertices[:, 1].astype(np.float32)),
            ("z", vertices[:, 2].astype(np.float32))] + list(vertex_props.items())
    head = ["ply", f"format {fmt} 1.0"] + [f"comment {c}" for c in comments]
    head += [f"element vertex {len(vertices)}"] + [f"property {names[np.asarray(a).dtype]} {n}" for n, a in cols]
    if faces is not None:
        head += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
        head += [f"property {names[np.asarray(a).dtype]} {n}" for n, a in face_props.items()]
    head.append("end_header")
    out = ("\n".join(head) + "\n").encode()
    if fmt == "ascii":
        lines = [" ".join(str(np.asarray(a)[i].item()) for _, a in cols) for i in range(len(vertices))]
        for i, f in enumerate(faces or []):
            lines.append(" ".join([str(len(f))] + [str(x) for x in f]
                                  + [str(np.asarray(a)[i].item()) for a in face_props.values()]))
        return _write(path, out + ("\n".join(lines) + "\n").encode())
    order = "<" if fmt == "binary_little_endian" else ">"
    body = bytearray()
    for i in range(len(vertices)):
        for _, a in cols:
            a = np.asarray(a)
            body += a[i:i + 1].astype(a.dtype.newbyteorder(order)).tobytes()
    for i, f in enumerate(faces or []):
        body += struct.pack(order + "B", len(f)) + np.asarray(f, np.dtype("int32").newbyteorder(order)).tobytes()
        for a in face_props.values():
            a = np.asarray(a)
            body += a[i:i + 1].astype(a.dtype.newbyteorder(order)).tobytes()
    return _write(path, out + bytes(body))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
