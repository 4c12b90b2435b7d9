// tpvkit view: the page script. Reads the data block written by tpvkit.outputs.view, decodes a
// key frame on demand and draws its voxels as instanced cubes with three.js. Everything that a
// test or a user may want to query is on window.tpvkitViewer.
import * as THREE from "three";
import { OrbitControls } from "three/addons/OrbitControls";

const DATA = JSON.parse(document.getElementById("tpvkit-data").textContent);
const [NX, NY, NZ] = DATA.grid_shape;
const PC_MIN = DATA.point_cloud_range.slice(0, 3);
const VOXEL = DATA.voxel_size;
const NUM_CLASSES = DATA.class_names.length;
const GRID_MAX = [0, 1, 2].map((a) => PC_MIN[a] + VOXEL[a] * DATA.grid_shape[a]);
const CENTER = new THREE.Vector3(...[0, 1, 2].map((a) => (PC_MIN[a] + GRID_MAX[a]) / 2));
const EXTENT = Math.hypot(GRID_MAX[0] - PC_MIN[0], GRID_MAX[1] - PC_MIN[1]);
const BACKGROUND = 0x15171c;
const UP = new THREE.Vector3(0, 0, 1); // the grid's z is up (LiDAR and ego frames alike)

// Difference categories: colour (sRGB) and name.
const DIFF = [
  { key: "correct", name: "correct", rgb: [176, 182, 190] },
  { key: "wrong", name: "wrong class", rgb: [255, 166, 0] },
  { key: "fp", name: "false positive", rgb: [235, 52, 52] },
  { key: "fn", name: "false negative", rgb: [40, 120, 255] },
];
const MASK_DIM = 0.22; // how much of its colour an unseen voxel keeps under "dim unseen"

const $ = (id) => document.getElementById(id);

function linear(rgb) {
  const c = new THREE.Color().setRGB(rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, THREE.SRGBColorSpace);
  return [c.r, c.g, c.b];
}
const PALETTE_LINEAR = DATA.palette.map(linear);
const DIFF_LINEAR = DIFF.map((d) => linear(d.rgb));
const GREY_LINEAR = linear([70, 74, 82]);

// ----------------------------------------------------------------------------------------------
// Decoding (the inverse of tpvkit.outputs.view.pack_voxels / pack_points)

async function inflate(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function setBits(bits, n) {
  // Flat indices (C order over X, Y, Z) of the set bits, least significant bit first.
  let count = 0;
  for (let i = 0; i < bits.length; i++) {
    let b = bits[i];
    while (b) { count += b & 1; b >>= 1; }
  }
  const index = new Uint32Array(count);
  let k = 0;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    if (!b) continue;
    for (let j = 0; j < 8; j++) if (b & (1 << j)) { const f = i * 8 + j; if (f < n) index[k++] = f; }
  }
  return index.subarray(0, k);
}

async function decodeVoxels(packed) {
  const n = NX * NY * NZ;
  const [bits, cls] = await Promise.all([inflate(packed.occ), inflate(packed.cls)]);
  const index = setBits(bits, n);
  if (index.length !== cls.length) throw new Error(`voxel data: ${index.length} bits, ${cls.length} classes`);
  const dense = new Uint8Array(n); // class + 1, 0 = free: for the difference and neighbour tests
  for (let i = 0; i < index.length; i++) dense[index[i]] = cls[i] + 1;
  return { index, cls, dense };
}

const cache = new Map();
async function decodeFrame(i) {
  if (cache.has(i)) return cache.get(i);
  const f = DATA.frames[i];
  const out = { pred: await decodeVoxels(f.pred), gt: f.gt ? await decodeVoxels(f.gt) : null };
  out.mask = f.mask_camera ? await inflate(f.mask_camera) : null;
  if (f.points) {
    const raw = await inflate(f.points);
    const cm = new Int16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
    out.points = Float32Array.from(cm, (v) => v / DATA.point_scale);
    out.pointLabels = f.point_labels ? await inflate(f.point_labels) : null;
    out.gtPointLabels = f.gt_point_labels ? await inflate(f.gt_point_labels) : null;
  }
  cache.set(i, out);
  if (cache.size > 12) cache.delete(cache.keys().next().value); // keep memory bounded
  return out;
}

// ----------------------------------------------------------------------------------------------
// State

const hasGT = DATA.frames.some((f) => f.gt);
const hasMask = DATA.frames.some((f) => f.mask_camera);
const hasPoints = DATA.frames.some((f) => f.points);
const state = {
  frame: 0,
  mode: "prediction",
  view: "perspective",
  shown: DATA.class_names.map((_, c) => !DATA.hidden_classes.includes(c)),
  diffShown: DIFF.map(() => true),
  points: false,
  imagePoints: true,
  ego: true,
  lighting: true,
  edges: true,
  mask: hasMask ? "dim" : "off",
  cull: true, // skip voxels enclosed on all six sides (never visible; a large part of a grid)
  playing: false,
};
let current = null; // the decoded frame on screen
let counts = { pred: new Array(NUM_CLASSES).fill(0), gt: new Array(NUM_CLASSES).fill(0), diff: [0, 0, 0, 0] };
let lastDrawn = { total: 0, passes: [] };
let shownCounts = [0, 0]; // shown voxels per viewport, before hidden ones are culled
let readyMs = null;

// ----------------------------------------------------------------------------------------------
// three.js scene

const canvas = $("canvas");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true });
renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
renderer.setClearColor(BACKGROUND, 1);
renderer.autoClear = false;
renderer.info.autoReset = false;

function edgeTexture() {
  // A white face with a darker rim: multiplied with each cube's colour it outlines the voxels.
  const size = 64;
  const c = document.createElement("canvas");
  c.width = c.height = size;
  const g = c.getContext("2d");
  g.fillStyle = "#6e6e6e";
  g.fillRect(0, 0, size, size);
  g.fillStyle = "#ffffff";
  g.fillRect(4, 4, size - 8, size - 8);
  const tex = new THREE.CanvasTexture(c);
  tex.colorSpace = THREE.SRGBColorSpace;
  tex.anisotropy = 4;
  return tex;
}
const EDGES = edgeTexture();
const cube = new THREE.BoxGeometry(1, 1, 1);
const materials = {};
function material() {
  const key = `${state.lighting}-${state.edges}`;
  if (!materials[key]) {
    const opts = { map: state.edges ? EDGES : null };
    materials[key] = state.lighting ? new THREE.MeshLambertMaterial(opts) : new THREE.MeshBasicMaterial(opts);
  }
  return materials[key];
}

const voxelScenes = [new THREE.Scene(), new THREE.Scene()]; // left (or only) and right viewport
const overlay = new THREE.Scene(); // ego car and points, drawn after the voxels
for (const s of [...voxelScenes, overlay]) {
  s.add(new THREE.HemisphereLight(0xffffff, 0x50545c, 1.6));
  const sun = new THREE.DirectionalLight(0xffffff, 1.9);
  sun.position.set(-0.35, -0.6, 1.0);
  s.add(sun);
}

class VoxelLayer {
  constructor(scene) { this.scene = scene; this.mesh = null; this.capacity = 0; }
  ensure(n) {
    if (n <= this.capacity && this.mesh) return;
    if (this.mesh) { this.scene.remove(this.mesh); this.mesh.dispose(); }
    this.capacity = Math.max(1024, Math.ceil(n * 1.25));
    this.mesh = new THREE.InstancedMesh(cube, material(), this.capacity);
    this.mesh.instanceMatrix.setUsage(THREE.DynamicDrawUsage);
    this.mesh.instanceColor = new THREE.InstancedBufferAttribute(new Float32Array(this.capacity * 3), 3);
    this.mesh.frustumCulled = false; // the instances move between frames: no stale bounds
    this.scene.add(this.mesh);
  }
  fill(index, colors, n) {
    // index: flat voxel indices (n); colors: linear RGB (3n).
    this.ensure(n);
    const m = this.mesh.instanceMatrix.array;
    const c = this.mesh.instanceColor.array;
    const zy = NY * NZ;
    for (let k = 0; k < n; k++) {
      const f = index[k];
      const x = Math.floor(f / zy), y = Math.floor(f / NZ) % NY, z = f % NZ;
      const o = 16 * k;
      m[o] = VOXEL[0]; m[o + 1] = 0; m[o + 2] = 0; m[o + 3] = 0;
      m[o + 4] = 0; m[o + 5] = VOXEL[1]; m[o + 6] = 0; m[o + 7] = 0;
      m[o + 8] = 0; m[o + 9] = 0; m[o + 10] = VOXEL[2]; m[o + 11] = 0;
      m[o + 12] = PC_MIN[0] + (x + 0.5) * VOXEL[0];
      m[o + 13] = PC_MIN[1] + (y + 0.5) * VOXEL[1];
      m[o + 14] = PC_MIN[2] + (z + 0.5) * VOXEL[2];
      m[o + 15] = 1;
    }
    c.set(colors.subarray(0, 3 * n));
    this.mesh.count = n;
    this.mesh.material = material();
    this.mesh.instanceMatrix.needsUpdate = true;
    this.mesh.instanceColor.needsUpdate = true;
  }
  get count() { return this.mesh ? this.mesh.count : 0; }
}
const layers = [new VoxelLayer(voxelScenes[0]), new VoxelLayer(voxelScenes[1])];

// Ego car: a box with a wedge on its roof pointing forward.
const ego = new THREE.Group();
{
  const body = new THREE.Mesh(
    new THREE.BoxGeometry(1, 1, 1),
    new THREE.MeshLambertMaterial({ color: 0xf2f2f2, transparent: true, opacity: 0.9 }),
  );
  const arrow = new THREE.Mesh(
    new THREE.ConeGeometry(0.32, 0.5, 3).rotateZ(-Math.PI / 2).translate(0.15, 0, 0.56),
    new THREE.MeshBasicMaterial({ color: 0xff3b30 }),
  );
  ego.add(body, arrow);
  const e = DATA.ego_box;
  const pose = new THREE.Matrix4().set(...e);
  ego.matrixAutoUpdate = false;
  ego.matrix.copy(pose);
  overlay.add(ego);
}
const EGO_POS = new THREE.Vector3().setFromMatrixPosition(ego.matrix);
const EGO_FWD = new THREE.Vector3(1, 0, 0).transformDirection(ego.matrix).setZ(0).normalize();

const pointsGeometry = new THREE.BufferGeometry();
const pointsObject = new THREE.Points(
  pointsGeometry,
  new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true }),
);
pointsObject.frustumCulled = false;
overlay.add(pointsObject);

// Cameras: a perspective one for 3D, driver and orbit, an orthographic one for bird's-eye.
const perspective = new THREE.PerspectiveCamera(45, 1, 0.1, 2000);
perspective.up.copy(UP);
const ortho = new THREE.OrthographicCamera(-1, 1, 1, -1, 0.1, 2000);
ortho.up.copy(UP);
let camera = perspective;
let controls = null;

function makeControls(cam, target) {
  if (controls) controls.dispose();
  controls = new OrbitControls(cam, canvas);
  controls.target.copy(target);
  controls.screenSpacePanning = true;
  controls.addEventListener("change", requestRender);
  controls.update();
}

function viewportSize() {
  const w = canvas.clientWidth || 1, h = canvas.clientHeight || 1;
  return state.mode === "side" ? [w / 2, h] : [w, h];
}

function fitOrtho() {
  const [w, h] = viewportSize();
  const aspect = w / h;
  const sx = (GRID_MAX[0] - PC_MIN[0]) / 2, sy = (GRID_MAX[1] - PC_MIN[1]) / 2;
  const half = Math.max(sy, sx / aspect) * 1.02;
  ortho.left = -half * aspect; ortho.right = half * aspect; ortho.top = half; ortho.bottom = -half;
  ortho.updateProjectionMatrix();
}

function setView(view) {
  state.view = view;
  const [w, h] = viewportSize();
  if (view === "bev") {
    camera = ortho;
    ortho.zoom = 1;
    fitOrtho();
    // Straight down with +y (forward in the LiDAR frame) up the screen: a hair of -y offset
    // tells the orbit controls which way is up.
    ortho.position.set(CENTER.x, CENTER.y - 1e-3, GRID_MAX[2] + 500);
    makeControls(ortho, new THREE.Vector3(CENTER.x, CENTER.y, PC_MIN[2]));
  } else {
    camera = perspective;
    perspective.aspect = w / h;
    perspective.updateProjectionMatrix();
    let eye, target;
    if (view === "driver") {
      // Behind and above the car, looking down the road ahead.
      eye = EGO_POS.clone().addScaledVector(EGO_FWD, -7).add(new THREE.Vector3(0, 0, 3.2));
      target = EGO_POS.clone().addScaledVector(EGO_FWD, 18);
    } else {
      // Behind the car (-y in the LiDAR frame) and 40 degrees up, the whole grid in view.
      const dist = EXTENT * 0.8;
      const el = (40 * Math.PI) / 180;
      target = CENTER.clone();
      eye = target.clone().add(new THREE.Vector3(0, -Math.cos(el) * dist, Math.sin(el) * dist));
    }
    perspective.position.copy(eye);
    makeControls(perspective, target);
  }
  controls.autoRotate = view === "orbit";
  controls.autoRotateSpeed = 1.5;
  for (const b of document.querySelectorAll("#views button")) b.classList.toggle("active", b.dataset.view === view);
  renderNow();
}

// ----------------------------------------------------------------------------------------------
// What is shown

function inMask(f) {
  const m = current.mask;
  return !m || ((m[f >> 3] >> (f & 7)) & 1) === 1;
}

function colourise(vox, out, n, colourOf) {
  // colourOf(k) -> linear RGB triple of the k-th kept voxel; applies the camera-mask dimming.
  for (let k = 0; k < n; k++) {
    const rgb = colourOf(k);
    let r = rgb[0], g = rgb[1], b = rgb[2];
    if (state.mask === "dim" && current.mask && !inMask(vox[k])) {
      r = GREY_LINEAR[0] + MASK_DIM * (r - GREY_LINEAR[0]);
      g = GREY_LINEAR[1] + MASK_DIM * (g - GREY_LINEAR[1]);
      b = GREY_LINEAR[2] + MASK_DIM * (b - GREY_LINEAR[2]);
    }
    out[3 * k] = r; out[3 * k + 1] = g; out[3 * k + 2] = b;
  }
}

function keepMask(f) {
  return state.mask !== "hide" || inMask(f);
}

function classVoxels(vox) {
  // The shown voxels of one labelling: flat indices, their colours, per-class counts.
  const index = new Uint32Array(vox.index.length);
  const labels = new Uint8Array(vox.index.length);
  const perClass = new Array(NUM_CLASSES).fill(0);
  let n = 0;
  for (let i = 0; i < vox.index.length; i++) {
    const c = vox.cls[i], f = vox.index[i];
    if (!state.shown[c] || !keepMask(f)) continue;
    perClass[c]++;
    index[n] = f; labels[n] = c; n++;
  }
  const colors = new Float32Array(3 * n);
  colourise(index, colors, n, (k) => PALETTE_LINEAR[labels[k]]);
  return { index, colors, n, perClass };
}

function classCounts(vox) {
  const perClass = new Array(NUM_CLASSES).fill(0);
  if (!vox) return perClass;
  for (let i = 0; i < vox.index.length; i++) if (keepMask(vox.index[i])) perClass[vox.cls[i]]++;
  return perClass;
}

function differenceVoxels(pred, gt) {
  // correct / wrong class / false positive: the predicted voxels (their predicted class decides
  // whether they are shown); false negative: ground-truth voxels the prediction left free.
  const cap = pred.index.length + gt.index.length;
  const index = new Uint32Array(cap);
  const kind = new Uint8Array(cap);
  const perKind = [0, 0, 0, 0];
  let n = 0;
  for (let i = 0; i < pred.index.length; i++) {
    const f = pred.index[i], c = pred.cls[i];
    if (!state.shown[c] || !keepMask(f)) continue;
    const g = gt.dense[f];
    const k = g === 0 ? 2 : g - 1 === c ? 0 : 1;
    perKind[k]++;
    if (!state.diffShown[k]) continue;
    index[n] = f; kind[n] = k; n++;
  }
  for (let i = 0; i < gt.index.length; i++) {
    const f = gt.index[i], c = gt.cls[i];
    if (pred.dense[f] || !state.shown[c] || !keepMask(f)) continue;
    perKind[3]++;
    if (!state.diffShown[3]) continue;
    index[n] = f; kind[n] = 3; n++;
  }
  const colors = new Float32Array(3 * n);
  colourise(index, colors, n, (k) => DIFF_LINEAR[kind[k]]);
  return { index, colors, n, perKind };
}

const keptDense = new Uint8Array(NX * NY * NZ); // scratch: 1 where a voxel is kept in a layer
function cullHidden(sel) {
  // Drop the kept voxels that no eye outside them can see: all six neighbours kept too (a
  // voxel on the grid's border always stays). Only those are drawn; `sel.n` stays the count
  // of shown voxels.
  const zy = NY * NZ;
  for (let k = 0; k < sel.n; k++) keptDense[sel.index[k]] = 1;
  const index = new Uint32Array(sel.n);
  const colors = new Float32Array(3 * sel.n);
  let m = 0;
  for (let k = 0; k < sel.n; k++) {
    const f = sel.index[k];
    const x = Math.floor(f / zy), y = Math.floor(f / NZ) % NY, z = f % NZ;
    const enclosed = x > 0 && x < NX - 1 && y > 0 && y < NY - 1 && z > 0 && z < NZ - 1 &&
      keptDense[f - zy] && keptDense[f + zy] && keptDense[f - NZ] && keptDense[f + NZ] &&
      keptDense[f - 1] && keptDense[f + 1];
    if (enclosed && state.cull) continue;
    index[m] = f;
    colors[3 * m] = sel.colors[3 * k]; colors[3 * m + 1] = sel.colors[3 * k + 1]; colors[3 * m + 2] = sel.colors[3 * k + 2];
    m++;
  }
  for (let k = 0; k < sel.n; k++) keptDense[sel.index[k]] = 0;
  return { index, colors, n: m, shown: sel.n };
}

function rebuild() {
  if (!current) return;
  const { pred, gt } = current;
  const mode = gt ? state.mode : "prediction";
  let left, right = null;
  if (mode === "difference") {
    left = differenceVoxels(pred, gt);
    counts.diff = left.perKind;
  } else if (mode === "ground_truth") {
    left = classVoxels(gt);
  } else {
    left = classVoxels(pred);
    if (mode === "side") right = classVoxels(gt);
  }
  const drawLeft = cullHidden(left);
  const drawRight = right ? cullHidden(right) : null;
  layers[0].fill(drawLeft.index, drawLeft.colors, drawLeft.n);
  if (drawRight) layers[1].fill(drawRight.index, drawRight.colors, drawRight.n);
  else if (layers[1].mesh) layers[1].mesh.count = 0;
  shownCounts = [left.n, right ? right.n : 0];
  counts.pred = classCounts(pred);
  counts.gt = classCounts(gt);
  rebuildPoints(mode);
  updateLegend(mode);
  drawStrip(mode);
  renderNow();
}

function pointLabelsFor(mode) {
  if (!current.points) return null;
  if (mode === "ground_truth" && current.gtPointLabels) return current.gtPointLabels;
  return current.pointLabels || current.gtPointLabels;
}

function rebuildPoints(mode) {
  const labels = pointLabelsFor(mode);
  pointsObject.visible = state.points && !!current.points;
  if (!current.points) return;
  const n = current.points.length / 3;
  const pos = [], col = [];
  for (let i = 0; i < n; i++) {
    const c = labels ? labels[i] : -1;
    if (c >= 0 && !state.shown[c]) continue;
    pos.push(current.points[3 * i], current.points[3 * i + 1], current.points[3 * i + 2]);
    const rgb = c >= 0 ? PALETTE_LINEAR[c] : [1, 1, 1];
    col.push(rgb[0], rgb[1], rgb[2]);
  }
  pointsGeometry.setAttribute("position", new THREE.Float32BufferAttribute(pos, 3));
  pointsGeometry.setAttribute("color", new THREE.Float32BufferAttribute(col, 3));
}

// ----------------------------------------------------------------------------------------------
// Rendering

let renderQueued = false;
function requestRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderNow(); });
}

function resize() {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const size = renderer.getSize(new THREE.Vector2());
  if (size.x !== w || size.y !== h) renderer.setSize(w, h, false);
}

function renderNow() {
  resize();
  const W = canvas.clientWidth, H = canvas.clientHeight;
  const side = state.mode === "side" && current && current.gt;
  const [w, h] = viewportSize();
  if (camera === perspective) { perspective.aspect = w / h; perspective.updateProjectionMatrix(); }
  else fitOrtho();
  renderer.setScissorTest(false);
  renderer.setViewport(0, 0, W, H);
  renderer.clear();
  overlay.visible = true;
  ego.visible = state.ego;
  const passes = [];
  const views = side ? [[0, 0, W / 2, H, 0], [W / 2, 0, W / 2, H, 1]] : [[0, 0, W, H, 0]];
  for (const [x, y, vw, vh, layer] of views) {
    renderer.setViewport(x, y, vw, vh);
    renderer.setScissor(x, y, vw, vh);
    renderer.setScissorTest(true);
    renderer.info.reset();
    renderer.render(voxelScenes[layer], camera);
    // 12 triangles per cube: the instances the GPU was asked to draw in this pass.
    passes.push(renderer.info.render.triangles / 12);
    renderer.render(overlay, camera);
  }
  renderer.setScissorTest(false);
  lastDrawn = { total: passes.reduce((a, b) => a + b, 0), passes };
  $("tag-left").textContent = side ? "prediction" : "";
  $("tag-right").textContent = side ? "ground truth" : "";
  $("tag-left").style.display = side ? "" : "none";
  $("tag-right").style.display = side ? "" : "none";
}

function animate() {
  requestAnimationFrame(animate);
  if (controls && controls.autoRotate) { controls.update(); }
}

// ----------------------------------------------------------------------------------------------
// Legend

function swatch(rgb) {
  return `<span class="swatch" style="background:rgb(${rgb.join(",")})"></span>`;
}

function updateLegend(mode) {
  const diff = mode === "difference";
  $("diff-legend").style.display = diff ? "" : "none";
  if (diff) {
    $("diff-legend").innerHTML = DIFF.map((d, k) =>
      `<tr data-kind="${k}" class="${state.diffShown[k] ? "" : "off"}"><td><input type="checkbox"${state.diffShown[k] ? " checked" : ""}></td>` +
      `<td>${swatch(d.rgb)} ${d.name}</td><td class="n">${counts.diff[k]}</td></tr>`).join("");
  }
  const gtCol = !!(current && current.gt);
  let html = `<tr><th></th><th style="text-align:left">${diff ? "classes shown" : ""}</th><th class="n">pred</th>${gtCol ? '<th class="n">gt</th>' : ""}</tr>`;
  for (let c = 0; c < NUM_CLASSES; c++) {
    if (c === DATA.empty_label) continue;
    const on = state.shown[c];
    html += `<tr data-class="${c}" class="${on ? "" : "off"}"><td><input type="checkbox"${on ? " checked" : ""}></td>` +
      `<td>${swatch(DATA.palette[c])} ${DATA.class_names[c]}</td><td class="n">${counts.pred[c]}</td>` +
      (gtCol ? `<td class="n">${counts.gt[c]}</td>` : "") + "</tr>";
  }
  $("legend").innerHTML = html;
}

$("legend").addEventListener("click", (ev) => {
  const row = ev.target.closest("tr[data-class]");
  if (!row) return;
  const c = Number(row.dataset.class);
  state.shown[c] = !state.shown[c];
  rebuild();
});
$("diff-legend").addEventListener("click", (ev) => {
  const row = ev.target.closest("tr[data-kind]");
  if (!row) return;
  const k = Number(row.dataset.kind);
  state.diffShown[k] = !state.diffShown[k];
  rebuild();
});
$("all-on").onclick = () => { state.shown = state.shown.map((_, c) => c !== DATA.empty_label); rebuild(); };
$("all-off").onclick = () => { state.shown = state.shown.map(() => false); rebuild(); };

// ----------------------------------------------------------------------------------------------
// Camera strip

const images = new Map(); // data URI -> decoded HTMLImageElement
function loadImage(src) {
  if (images.has(src)) return images.get(src);
  const p = new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("a camera image could not be decoded"));
    img.src = src;
  });
  images.set(src, p);
  if (images.size > 120) images.delete(images.keys().next().value);
  return p;
}

let stripToken = 0;
async function drawStrip(mode) {
  const cams = DATA.frames[state.frame].cameras || [];
  const strip = $("strip");
  const token = ++stripToken;
  if (!cams.length) { strip.innerHTML = ""; return; }
  if (strip.children.length !== cams.length) {
    strip.innerHTML = cams.map((c) => `<figure><canvas></canvas><figcaption>${c.name.replace("CAM_", "")}</figcaption></figure>`).join("");
  }
  const decoded = await Promise.all(cams.map((c) => loadImage(c.src)));
  if (token !== stripToken) return; // a newer frame asked in the meantime
  const labels = pointLabelsFor(mode);
  const pts = current.points;
  cams.forEach((cam, i) => {
    const cv = strip.children[i].querySelector("canvas");
    strip.children[i].querySelector("figcaption").textContent = cam.name.replace("CAM_", "");
    cv.width = cam.width; cv.height = cam.height;
    const g = cv.getContext("2d");
    g.drawImage(decoded[i], 0, 0, cam.width, cam.height);
    if (!state.imagePoints || !pts) return;
    const P = cam.projection;
    const hits = [];
    for (let k = 0; k < pts.length / 3; k++) {
      const c = labels ? labels[k] : -1;
      if (c >= 0 && !state.shown[c]) continue;
      const x = pts[3 * k], y = pts[3 * k + 1], z = pts[3 * k + 2];
      const d = P[8] * x + P[9] * y + P[10] * z + P[11];
      if (d <= 0.1) continue;
      const u = (P[0] * x + P[1] * y + P[2] * z + P[3]) / d;
      const v = (P[4] * x + P[5] * y + P[6] * z + P[7]) / d;
      if (u < 0 || v < 0 || u >= cam.width || v >= cam.height) continue;
      hits.push([d, u, v, c]);
    }
    hits.sort((a, b) => b[0] - a[0]); // far first: near points are painted over them
    for (const [, u, v, c] of hits) {
      const rgb = c >= 0 ? DATA.palette[c] : [255, 255, 255];
      g.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      g.fillRect(u - 1, v - 1, 2, 2);
    }
  });
}

// ----------------------------------------------------------------------------------------------
// Frames, modes, keys

function frameLabel(i) {
  const f = DATA.frames[i];
  const t0 = DATA.frames[0].timestamp;
  const dt = f.timestamp >= 0 && t0 >= 0 ? ` · +${((f.timestamp - t0) / 1e6).toFixed(1)} s` : "";
  return { short: `${i + 1} / ${DATA.frames.length}`, long: `${f.token}${dt}${f.source ? " · " + f.source : ""}` };
}

async function setFrame(i) {
  i = Math.max(0, Math.min(DATA.frames.length - 1, i));
  state.frame = i;
  const decoded = await decodeFrame(i);
  if (state.frame !== i) return; // the user moved on while this one was decoding
  current = decoded;
  $("slider").value = String(i);
  const label = frameLabel(i);
  $("frame-label").textContent = label.short;
  $("frame-info").textContent = label.long;
  rebuild();
  decodeFrame(Math.min(i + 1, DATA.frames.length - 1)); // decode the next one ahead of time
}

function setMode(mode) {
  if (mode !== "prediction" && !(current && current.gt)) return;
  state.mode = mode;
  for (const b of document.querySelectorAll("#modes button")) b.classList.toggle("active", b.dataset.mode === mode);
  $("legend-title").textContent = mode === "difference" ? "Difference" : "Classes";
  if (state.view === "bev") fitOrtho();
  rebuild();
}

function bindOption(id, key, after) {
  const el = $(id);
  if (el.type === "checkbox") el.checked = state[key];
  else el.value = state[key];
  el.addEventListener("change", () => {
    state[key] = el.type === "checkbox" ? el.checked : el.value;
    if (after) after(); else rebuild();
  });
}

let playTimer = null;
function setPlaying(on) {
  state.playing = on && DATA.frames.length > 1;
  $("play").textContent = state.playing ? "❚❚" : "▶";
  clearInterval(playTimer);
  if (state.playing) {
    playTimer = setInterval(() => setFrame((state.frame + 1) % DATA.frames.length), 500);
  }
}

function wire() {
  $("title").textContent = DATA.title;
  document.querySelectorAll("#modes button").forEach((b) => {
    b.disabled = b.dataset.mode !== "prediction" && !hasGT;
    b.onclick = () => setMode(b.dataset.mode);
  });
  document.querySelectorAll("#views button").forEach((b) => (b.onclick = () => setView(b.dataset.view)));
  bindOption("opt-points", "points");
  bindOption("opt-image-points", "imagePoints");
  bindOption("opt-ego", "ego", renderNow);
  bindOption("opt-lighting", "lighting");
  bindOption("opt-edges", "edges");
  bindOption("opt-mask", "mask");
  $("opt-points").disabled = !hasPoints;
  $("mask-row").style.display = hasMask ? "" : "none";
  const slider = $("slider");
  slider.max = String(DATA.frames.length - 1);
  slider.addEventListener("input", () => setFrame(Number(slider.value)));
  $("strip").addEventListener("click", (ev) => {
    const fig = ev.target.closest("figure");
    if (!fig) return;
    const big = !fig.classList.contains("big");
    for (const f of $("strip").children) f.classList.remove("big");
    fig.classList.toggle("big", big);
  });
  $("prev").onclick = () => setFrame(state.frame - 1);
  $("next").onclick = () => setFrame(state.frame + 1);
  $("play").onclick = () => setPlaying(!state.playing);
  window.addEventListener("resize", () => { if (state.view === "bev") fitOrtho(); renderNow(); });
  window.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement && ev.target.type !== "checkbox" && ev.target.type !== "range") return;
    const keys = {
      ArrowRight: () => setFrame(state.frame + 1), ArrowLeft: () => setFrame(state.frame - 1),
      Home: () => setFrame(0), End: () => setFrame(DATA.frames.length - 1),
      " ": () => setPlaying(!state.playing),
      1: () => setMode("prediction"), 2: () => setMode("ground_truth"), 3: () => setMode("side"), 4: () => setMode("difference"),
      b: () => setView("bev"), d: () => setView("driver"), o: () => setView("orbit"), r: () => setView("perspective"),
      Escape: () => { for (const f of $("strip").children) f.classList.remove("big"); },
      p: () => { if (hasPoints) { state.points = !state.points; $("opt-points").checked = state.points; rebuild(); } },
    };
    const action = keys[ev.key];
    if (action) { ev.preventDefault(); action(); }
  });
}

// ----------------------------------------------------------------------------------------------
// The page's interface for scripts and tests

function project(x, y, z) {
  // World point -> CSS pixels in the (left) viewport, for layout checks.
  const [w, h] = viewportSize();
  const v = new THREE.Vector3(x, y, z).project(camera);
  return [((v.x + 1) / 2) * w, ((1 - v.y) / 2) * h];
}

window.tpvkitViewer = {
  stats: () => ({
    frame: state.frame,
    frames: DATA.frames.length,
    mode: state.mode,
    view: state.view,
    drawn: lastDrawn.total,
    passes: lastDrawn.passes.slice(),
    instances: [layers[0].count, state.mode === "side" ? layers[1].count : 0],
    shown: shownCounts[0] + shownCounts[1],
    shownPerView: shownCounts.slice(),
    counts: JSON.parse(JSON.stringify(counts)),
    classesShown: state.shown.slice(),
    hasGroundTruth: hasGT,
    hasMask,
    readyMs,
  }),
  setFrame: async (i) => { await setFrame(i); await presented(); return window.tpvkitViewer.stats(); },
  setMode: (m) => { setMode(m); return window.tpvkitViewer.stats(); },
  setView: (v) => { setView(v); return window.tpvkitViewer.stats(); },
  setOptions: (opts) => {
    for (const [k, v] of Object.entries(opts)) if (k in state) state[k] = v;
    rebuild();
    return window.tpvkitViewer.stats();
  },
  project,
  gridBounds: () => ({ min: PC_MIN.slice(), max: GRID_MAX.slice() }),
  snapshot: () => { renderNow(); return canvas.toDataURL("image/png"); },
};

function presented() {
  // Resolves once the browser has produced the frames after this one: the drawn picture is
  // on screen (with software WebGL that can take much longer than the draw call).
  return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}

async function main() {
  wire();
  setView("perspective");
  await setFrame(0);
  setMode("prediction");
  animate();
  await presented();
  readyMs = performance.now();
  document.body.dataset.ready = "1";
}

main().catch((err) => {
  const box = $("error");
  box.style.display = "block";
  box.textContent = `tpvkit view could not draw this file: ${err.message}`;
  console.error(err);
});
