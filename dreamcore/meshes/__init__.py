"""Triangle meshes: loading (GLB/OBJ/PLY), normalization, a PyTorch reference rasterizer and mesh rendering."""
