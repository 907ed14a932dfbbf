"""Import a GLB with Blender's own glTF importer (PyPI package ``bpy``, not a dreamcore dependency) and report
the meshes, their material's base-colour image and UV layers.

    python -m venv /tmp/bpy && /tmp/bpy/bin/pip install bpy && /tmp/bpy/bin/python tools/load_gltf_blender.py model.glb
"""
import sys, json, bpy
path = sys.argv[1]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=path)
meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
info = []
for o in meshes:
    mat = o.active_material
    nodes = mat.node_tree.nodes if mat and mat.use_nodes else []
    imgs = [n.image for n in nodes if n.type == "TEX_IMAGE" and n.image]
    bsdf = [n for n in nodes if n.type == "BSDF_PRINCIPLED"]
    linked = bool(bsdf and bsdf[0].inputs["Base Color"].is_linked)
    info.append({"name": o.name, "verts": len(o.data.vertices), "faces": len(o.data.polygons), "material": mat.name if mat else None,
                 "images": [(i.size[0], i.size[1]) for i in imgs], "base_color_textured": linked,
                 "uv_layers": len(o.data.uv_layers), "dims": list(o.dimensions)})
print("BLENDER_REPORT " + json.dumps(info))
