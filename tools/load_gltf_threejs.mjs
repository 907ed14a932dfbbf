#!/usr/bin/env node
// Load a GLB with three.js's own GLTFLoader (npm package `three`, found under <repo>/.cache/node) in Node and
// report what a three.js viewer would get: meshes, vertex count, attributes, and the material's base-colour map.
// Node has no DOM, so createImageBitmap is replaced by a stub that reads the embedded image's PNG header (the
// texture's pixels are not decoded; the GLTF parsing, accessors, material and texture binding are three's own).
// Usage: node tools/load_gltf_threejs.mjs FILE.glb   -> one JSON line; exit 0 when a textured mesh loaded.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.THREE_DIR || path.join(here, "..", ".cache", "node", "node_modules", "three");
const THREE = await import(pathToFileURL(path.join(nodeDir, "build", "three.module.js")).href);
const { GLTFLoader } = await import(pathToFileURL(path.join(nodeDir, "examples", "jsm", "loaders", "GLTFLoader.js")).href);

globalThis.self = globalThis;
globalThis.createImageBitmap = async (blob) => {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const view = new DataView(bytes.buffer);
  const png = bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;
  return { width: png ? view.getUint32(16) : 0, height: png ? view.getUint32(20) : 0, close() {}, png };
};

const file = process.argv[2];
const data = await readFile(file);
const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
new GLTFLoader().parse(buffer, "", (gltf) => {
  const meshes = [];
  gltf.scene.traverse((o) => { if (o.isMesh) meshes.push(o); });
  const m = meshes[0];
  const map = m && m.material && m.material.map;
  const box = new THREE.Box3().setFromObject(gltf.scene);
  const report = {
    meshes: meshes.length,
    vertices: m ? m.geometry.attributes.position.count : 0,
    attributes: m ? Object.keys(m.geometry.attributes).sort() : [],
    material: m ? m.material.type : null,
    map: map ? { width: map.image.width, height: map.image.height, colorSpace: map.colorSpace } : null,
    bbox: [box.min.toArray(), box.max.toArray()],
  };
  console.log(JSON.stringify(report));
  process.exit(meshes.length > 0 && map && map.image.width > 0 ? 0 : 1);
}, (err) => { console.error(String(err)); process.exit(2); });
