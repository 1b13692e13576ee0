// overread study viewer: Cornerstone3D fed by the gateway's own DICOMweb (WADO-RS).
//
// The page's <section id="viewer"> names the study's metadata URL, the AI layers URL
// and the window presets; this module loads every instance's header with one
// WADO-RS metadata request, lists the series and images, and shows one image at a
// time at full resolution (decoded frames from WADO-RS, fetched with the page's
// session cookie). The AI layers (heatmap, top-region contour, box) are drawn on the
// viewport's own canvas after each render, in image coordinates, so they follow
// zoom, pan and window/level.
import {
  RenderingEngine,
  Enums,
  eventTarget,
  imageLoader,
  init as initCore,
  metaData,
  utilities,
  getShouldUseCPURendering,
} from "@cornerstonejs/core";
import {
  init as initTools,
  addTool,
  ToolGroupManager,
  WindowLevelTool,
  PanTool,
  ZoomTool,
  LengthTool,
  Enums as ToolEnums,
} from "@cornerstonejs/tools";

const FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"';
export const SCHEME = "overread";
const ENGINE_ID = "overread-engine";
const VIEWPORT_ID = "overread-main";
const TOOL_GROUP_ID = "overread-tools";
// Images with more pixels than this show a downsampled level (the gateway's rendered
// JPEG/PNG, fitted to the viewport) while the full-resolution frame loads.
export const PREVIEW_PIXELS = 1024 * 1024;
// SEG segment outlines: the Okabe-Ito colours (colour-blind-safe), one per segment.
const SEG_COLOURS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"];

// -- DICOM JSON headers -------------------------------------------------------------
function value(header, tag) {
  const element = header[tag];
  return element && element.Value ? element.Value : undefined;
}

function first(header, tag, fallback) {
  const values = value(header, tag);
  return values && values.length ? values[0] : fallback;
}

function numbers(header, tag) {
  const values = value(header, tag);
  return values ? values.map(Number) : undefined;
}

/** The facts of one instance the viewer needs, from its DICOM JSON header. */
export function describe(header, base) {
  const study = first(header, "0020000D", "");
  const series = first(header, "0020000E", "");
  const sop = first(header, "00080018", "");
  const spacing = numbers(header, "00280030") || numbers(header, "00181164");
  const centers = numbers(header, "00281050");
  const widths = numbers(header, "00281051");
  const url =
    base +
    "/studies/" + encodeURIComponent(study) +
    "/series/" + encodeURIComponent(series) +
    "/instances/" + encodeURIComponent(sop);
  return {
    imageId: SCHEME + ":" + url,
    url,
    study,
    series,
    sop,
    modality: first(header, "00080060", "OT"),
    seriesNumber: Number(first(header, "00200011", 0)),
    seriesDescription: first(header, "0008103E", ""),
    instanceNumber: Number(first(header, "00200013", 0)),
    rows: Number(first(header, "00280010", 0)),
    columns: Number(first(header, "00280011", 0)),
    samplesPerPixel: Number(first(header, "00280002", 1)),
    photometric: first(header, "00280004", "MONOCHROME2"),
    bitsAllocated: Number(first(header, "00280100", 16)),
    bitsStored: Number(first(header, "00280101", 16)),
    highBit: Number(first(header, "00280102", 15)),
    pixelRepresentation: Number(first(header, "00280103", 0)),
    slope: Number(first(header, "00281053", 1)),
    intercept: Number(first(header, "00281052", 0)),
    windowCenter: centers ? centers[0] : undefined,
    windowWidth: widths ? widths[0] : undefined,
    voiFunction: first(header, "00281056", "LINEAR"),
    spacing: spacing && spacing.length === 2 && spacing[0] > 0 && spacing[1] > 0 ? spacing : null,
    frameOfReference: first(header, "00200052", ""),
    orientation: numbers(header, "00200037"),
    position: numbers(header, "00200032"),
  };
}

// -- metadata provider and image loader -----------------------------------------------
export const described = new Map(); // imageId -> describe()

export function provide(type, imageId) {
  const d = described.get(imageId);
  if (!d) { return undefined; }
  const orientation = d.orientation && d.orientation.length === 6 ? d.orientation : [1, 0, 0, 0, 1, 0];
  switch (type) {
    case "imagePixelModule":
      return {
        samplesPerPixel: d.samplesPerPixel,
        photometricInterpretation: d.photometric,
        rows: d.rows,
        columns: d.columns,
        bitsAllocated: d.bitsAllocated,
        bitsStored: d.bitsStored,
        highBit: d.highBit,
        pixelRepresentation: d.pixelRepresentation,
      };
    case "generalSeriesModule":
      return { modality: d.modality, seriesInstanceUID: d.series, seriesNumber: d.seriesNumber };
    case "generalStudyModule":
      return { studyInstanceUID: d.study };
    case "sopCommonModule":
      return { sopInstanceUID: d.sop };
    case "imagePlaneModule":
      return {
        frameOfReferenceUID: d.frameOfReference,
        rows: d.rows,
        columns: d.columns,
        imageOrientationPatient: orientation,
        rowCosines: orientation.slice(0, 3),
        columnCosines: orientation.slice(3, 6),
        imagePositionPatient: d.position && d.position.length === 3 ? d.position : [0, 0, 0],
        pixelSpacing: d.spacing || undefined,
        rowPixelSpacing: d.spacing ? d.spacing[0] : null,
        columnPixelSpacing: d.spacing ? d.spacing[1] : null,
        usingDefaultValues: !d.spacing,
      };
    case "voiLutModule":
      return d.windowWidth
        ? { windowCenter: [d.windowCenter], windowWidth: [d.windowWidth], voiLUTFunction: d.voiFunction }
        : {};
    case "modalityLutModule":
      return { rescaleSlope: 1, rescaleIntercept: 0 };
    case "generalImageModule":
      return { instanceNumber: d.instanceNumber };
    default:
      return undefined;
  }
}

/** The body of the first part of a multipart/related response. */
function firstPart(buffer, contentType) {
  const bytes = new Uint8Array(buffer);
  const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
  if (!match) { return bytes; }
  const text = new TextDecoder("latin1");
  const head = text.decode(bytes.subarray(0, Math.min(bytes.length, 4096)));
  const start = head.indexOf("\r\n\r\n");
  if (start < 0) { throw new Error("malformed multipart frame response"); }
  const marker = new TextEncoder().encode("\r\n--" + match[1]);
  let end = bytes.length;
  // Find the first marker after the headers (one frame asked for, so one part).
  for (let i = start + 4; i <= bytes.length - marker.length; i++) {
    let hit = true;
    for (let j = 0; j < marker.length; j++) {
      if (bytes[i + j] !== marker[j]) { hit = false; break; }
    }
    if (hit) { end = i; break; }
  }
  return bytes.slice(start + 4, end);
}

function typedPixels(d, raw) {
  const buffer = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
  let pixels;
  if (d.bitsAllocated <= 8) {
    pixels = d.pixelRepresentation ? Int16Array.from(new Int8Array(buffer)) : new Uint8Array(buffer);
  } else if (d.bitsAllocated <= 16) {
    pixels = d.pixelRepresentation ? new Int16Array(buffer) : new Uint16Array(buffer);
  } else {
    pixels = Float32Array.from(d.pixelRepresentation ? new Int32Array(buffer) : new Uint32Array(buffer));
  }
  if (d.slope !== 1 || d.intercept !== 0) {
    const scaled = new Float32Array(pixels.length);
    for (let i = 0; i < pixels.length; i++) { scaled[i] = pixels[i] * d.slope + d.intercept; }
    pixels = scaled;
  }
  return pixels;
}

function dataType(pixels) {
  return pixels.constructor.name;
}

/** A request the page started before this script ran (overread.js), else a new one. */
function prefetched(url, init) {
  const early = window.overreadPrefetch && window.overreadPrefetch[url];
  if (early) {
    delete window.overreadPrefetch[url];
    return early;
  }
  return fetch(url, init);
}

async function loadFrame(imageId) {
  const d = described.get(imageId);
  if (!d) { throw new Error("unknown image " + imageId); }
  const response = await prefetched(d.url + "/frames/1", {
    credentials: "same-origin",
    headers: { Accept: FRAME_ACCEPT },
  });
  if (!response.ok) { throw new Error("frame of " + d.sop + ": HTTP " + response.status); }
  const raw = firstPart(await response.arrayBuffer(), response.headers.get("content-type"));
  const pixels = typedPixels(d, raw);
  const colour = d.samplesPerPixel === 3;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < pixels.length; i++) {
    const v = pixels[i];
    if (v < min) { min = v; }
    if (v > max) { max = v; }
  }
  const center = d.windowWidth ? d.windowCenter : (min + max) / 2;
  const width = d.windowWidth ? d.windowWidth : Math.max(max - min, 1);
  return {
    imageId,
    minPixelValue: min,
    maxPixelValue: max,
    slope: 1,
    intercept: 0,
    windowCenter: colour ? 127.5 : center,
    windowWidth: colour ? 255 : width,
    voiLUTFunction: "LINEAR",
    getPixelData: () => pixels,
    imageFrame: { pixelData: pixels },
    getCanvas: undefined,
    rows: d.rows,
    columns: d.columns,
    height: d.rows,
    width: d.columns,
    color: colour,
    rgba: false,
    numberOfComponents: colour ? 3 : 1,
    columnPixelSpacing: d.spacing ? d.spacing[1] : 1,
    rowPixelSpacing: d.spacing ? d.spacing[0] : 1,
    invert: d.photometric === "MONOCHROME1",
    photometricInterpretation: d.photometric,
    sizeInBytes: pixels.byteLength,
    dataType: dataType(pixels),
    preScale: { enabled: true, scaled: true },
  };
}

export function overreadImageLoader(imageId) {
  return { promise: loadFrame(imageId) };
}

// -- the viewer ---------------------------------------------------------------------
class StudyViewer {
  constructor(root) {
    this.root = root;
    this.element = root.querySelector("#viewport");
    this.readout = root.querySelector("#viewer-readout");
    this.status = root.querySelector("#viewer-status");
    this.presets = JSON.parse(root.dataset.presets || "[]");
    this.images = [];
    this.index = 0;
    this.layers = null; // the AI layers of the selected finding, once fetched
    this.heatmapPicture = null;
    this.show = { heatmap: true, contour: true, box: true, seg: true };
    this.opacity = { heatmap: 0.5, contour: 1, box: 1, seg: 1 };
    this.segments = []; // outlined SEG segments, on whichever image they belong to
    this.measuring = false;
  }

  async start() {
    initCore();
    initTools();
    imageLoader.registerImageLoader(SCHEME, overreadImageLoader);
    metaData.addProvider(provide, 10000);
    const response = await prefetched(this.root.dataset.metadata, {
      credentials: "same-origin",
      headers: { Accept: "application/dicom+json" },
    });
    if (!response.ok) { throw new Error("study metadata: HTTP " + response.status); }
    const headers = await response.json();
    const base = this.root.dataset.dicomweb;
    this.images = headers
      .map((h) => describe(h, base))
      .filter((d) => d.rows > 0 && d.columns > 0)
      .sort((a, b) => a.seriesNumber - b.seriesNumber || a.series.localeCompare(b.series) ||
        a.instanceNumber - b.instanceNumber);
    this.images.forEach((d) => described.set(d.imageId, d));
    if (!this.images.length) { throw new Error("no image in this study"); }
    this.listSeries();
    this.engine = new RenderingEngine(ENGINE_ID);
    this.engine.enableElement({
      viewportId: VIEWPORT_ID,
      type: Enums.ViewportType.STACK,
      element: this.element,
      defaultOptions: { background: [0, 0, 0] },
    });
    this.viewport = this.engine.getViewport(VIEWPORT_ID);
    this.preview = document.createElement("img");
    this.preview.className = "viewer-preview";
    this.preview.alt = "";
    this.preview.hidden = true;
    this.element.appendChild(this.preview);
    this.setUpTools();
    this.element.addEventListener(Enums.Events.IMAGE_RENDERED, () => this.drawLayers());
    this.element.addEventListener("mousemove", (event) => this.readPixel(event));
    this.element.addEventListener("contextmenu", (event) => event.preventDefault());
    new ResizeObserver(() => this.engine.resize(true, false)).observe(this.element);
    this.bindControls();
    const reference = this.root.dataset.reference;
    const at = this.images.findIndex((d) => d.sop === reference);
    await this.open(at >= 0 ? at : 0);
    this.loadLayers();
    this.loadSegments();
  }

  setUpTools() {
    [WindowLevelTool, PanTool, ZoomTool, LengthTool].forEach((tool) => addTool(tool));
    const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
    [WindowLevelTool, PanTool, ZoomTool, LengthTool].forEach((tool) => group.addTool(tool.toolName));
    group.addViewport(VIEWPORT_ID, ENGINE_ID);
    const { MouseBindings } = ToolEnums;
    group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    group.setToolPassive(LengthTool.toolName);
    this.tools = group;
  }

  listSeries() {
    const list = this.root.querySelector("#viewer-series");
    list.textContent = "";
    let current = null;
    this.images.forEach((d, index) => {
      if (!current || current.dataset.series !== d.series) {
        current = document.createElement("li");
        current.dataset.series = d.series;
        const title = document.createElement("span");
        title.className = "series-title";
        title.textContent = "Series " + (d.seriesNumber || "?") + " " + d.modality +
          (d.seriesDescription ? " · " + d.seriesDescription : "");
        current.appendChild(title);
        current.appendChild(document.createElement("div"));
        list.appendChild(current);
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb";
      button.dataset.index = String(index);
      button.dataset.sop = d.sop;
      button.title = "Image " + (d.instanceNumber || index + 1) + " of series " + (d.seriesNumber || "?");
      const picture = document.createElement("img");
      picture.alt = button.title;
      picture.loading = "lazy";
      picture.src = d.url + "/rendered?viewport=96,96";
      button.appendChild(picture);
      button.addEventListener("click", () => this.open(index));
      current.lastChild.appendChild(button);
    });
  }

  async open(index) {
    if (index < 0 || index >= this.images.length) { return; }
    this.index = index;
    const d = this.images[index];
    this.root.querySelectorAll("#viewer-series .thumb").forEach((b) => {
      b.setAttribute("aria-current", b.dataset.index === String(index) ? "true" : "false");
    });
    this.status.textContent = "Loading image " + (index + 1) + " of " + this.images.length + "…";
    this.showPreview(d);
    await this.viewport.setStack([d.imageId], 0);
    this.viewport.render();
    if (this.index === index) {
      this.preview.hidden = true;
      this.root.dataset.level = "full";
    }
    const ruler = this.root.querySelector('[data-action="ruler"]');
    ruler.disabled = !d.spacing;
    ruler.title = d.spacing ? "Measure in mm (m)" : "No Pixel Spacing in this image: no mm ruler";
    if (!d.spacing && this.measuring) { this.toggleRuler(); }
    this.status.textContent =
      "Image " + (index + 1) + " of " + this.images.length + " · " + d.columns + " × " + d.rows +
      (d.spacing ? " · " + d.spacing[1] + " × " + d.spacing[0] + " mm/px" : " · no pixel spacing") +
      (this.layers && d.sop !== this.layers.sop_instance_uid ? " · AI layers are on another image" : "");
    this.root.dataset.shown = d.sop;
    if (!this.root.dataset.ready && window.performance && performance.mark) {
      performance.mark("overread:image-shown"); // read by `overread bench worklist`
    }
    this.root.dataset.ready = "true";
  }

  /** A large image first shows a downsampled level: the gateway's rendering of it,
   * fitted to the viewport, until the full-resolution frame is decoded and drawn. */
  showPreview(d) {
    if (d.rows * d.columns <= PREVIEW_PIXELS) {
      this.preview.hidden = true;
      this.root.dataset.level = "loading";
      return;
    }
    const rect = this.element.getBoundingClientRect();
    const ratio = Math.min(2, window.devicePixelRatio || 1);
    const width = Math.max(64, Math.min(d.columns, Math.round(rect.width * ratio)));
    const height = Math.max(64, Math.min(d.rows, Math.round(rect.height * ratio)));
    this.preview.onload = () => {
      if (!this.preview.hidden) { this.root.dataset.level = "preview"; }
    };
    this.preview.src = d.url + "/rendered?viewport=" + width + "," + height;
    this.preview.hidden = false;
    this.root.dataset.level = "loading";
  }

  // -- layers -------------------------------------------------------------------------
  layerControls(enabled) {
    this.root.querySelectorAll(
      'input[data-layer]:not([data-layer="seg"]), input[data-opacity]:not([data-opacity="seg"])'
    ).forEach((input) => {
      input.disabled = !enabled;
    });
  }

  async loadSegments() {
    const url = this.root.dataset.seg;
    if (!url) { return; }
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      const body = await response.json();
      // Past the palette's seven colours, the outlines are dashed.
      this.segments = (body.segments || []).map((segment, i) => Object.assign(
        { colour: SEG_COLOURS[i % SEG_COLOURS.length], dashed: i >= SEG_COLOURS.length }, segment));
    } catch (error) {
      this.segments = [];
    }
    const legend = this.root.querySelector("#seg-legend");
    legend.textContent = "";
    const sources = [...new Set(this.segments.map((segment) => segment.description))];
    if (sources.length) {
      const title = document.createElement("li");
      title.className = "seg-source muted";
      title.textContent = "SEG: " + (sources.filter(Boolean).join("; ") || "segmentation");
      legend.appendChild(title);
    }
    this.segments.forEach((segment) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch" + (segment.dashed ? " dashed" : "");
      swatch.style.borderColor = segment.colour;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(" " + segment.label));
      item.dataset.sop = segment.sop_instance_uid;
      legend.appendChild(item);
    });
    legend.hidden = this.segments.length === 0;
    this.root.querySelectorAll('input[data-layer="seg"], input[data-opacity="seg"]').forEach((input) => {
      input.disabled = this.segments.length === 0;
    });
    this.root.dataset.segments = String(this.segments.length);
    this.viewport.render();
  }

  async loadLayers() {
    const url = this.root.dataset.layers;
    const note = this.root.querySelector("#viewer-layers-note");
    this.layerControls(false);
    if (!url) { note.textContent = "No finding selected: no AI layers."; return; }
    note.textContent = "Computing the AI layers…";
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      const layers = await response.json();
      if (!layers.heatmap_url) {
        note.textContent = layers.note || "No heatmap for this finding.";
        return;
      }
      const picture = new Image();
      picture.src = layers.heatmap_url;
      await picture.decode();
      this.layers = layers;
      this.heatmapPicture = picture;
      this.layerControls(true);
      note.textContent = "AI layers: " + layers.finding + " (" + layers.model + ")";
      this.root.dataset.layers_ready = "true";
      this.root.setAttribute("data-layers-ready", "true");
      if (window.performance && performance.mark) { performance.mark("overread:layers-shown"); }
      this.viewport.render();
    } catch (error) {
      note.textContent = "AI layers unavailable (" + error.message + ").";
    }
  }

  drawLayers() {
    const d = this.images[this.index];
    if (!d) { return; }
    const layers = this.layers && d.sop === this.layers.sop_instance_uid ? this.layers : null;
    const segments = this.show.seg ? this.segments.filter((s) => s.sop_instance_uid === d.sop) : [];
    if (!layers && !segments.length) { return; }
    const canvas = this.viewport.getCanvas();
    const context = canvas.getContext("2d");
    if (!context) { return; }
    const toCanvas = (col, row) =>
      this.viewport.worldToCanvas(utilities.imageToWorldCoords(d.imageId, [col, row]));
    const origin = toCanvas(0, 0);
    const across = toCanvas(d.columns, 0);
    const down = toCanvas(0, d.rows);
    const ratio = canvas.width / (canvas.clientWidth || canvas.width);
    context.save();
    context.setTransform(
      ratio * (across[0] - origin[0]) / d.columns, ratio * (across[1] - origin[1]) / d.columns,
      ratio * (down[0] - origin[0]) / d.rows, ratio * (down[1] - origin[1]) / d.rows,
      ratio * origin[0], ratio * origin[1],
    );
    const pixel = d.columns / Math.max(1, Math.hypot(across[0] - origin[0], across[1] - origin[1]));
    if (layers && this.show.heatmap && this.heatmapPicture) {
      context.globalAlpha = this.opacity.heatmap;
      context.imageSmoothingEnabled = true;
      context.drawImage(this.heatmapPicture, 0, 0, d.columns, d.rows);
    }
    context.globalAlpha = 1;
    context.lineWidth = 2 * pixel;
    context.strokeStyle = "#ffffff";
    if (layers && this.show.contour && layers.region) {
      context.globalAlpha = this.opacity.contour;
      context.beginPath();
      layers.region.contours.forEach((line) => {
        line.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
      });
      // White on a dark edge, readable on bright and dark anatomy alike.
      context.strokeStyle = "rgba(0, 0, 0, 0.7)";
      context.lineWidth = 4 * pixel;
      context.stroke();
      context.strokeStyle = "#ffffff";
      context.lineWidth = 2 * pixel;
      context.stroke();
    }
    if (layers && this.show.box && layers.region && layers.region.box) {
      const [x0, y0, x1, y1] = layers.region.box;
      context.globalAlpha = this.opacity.box;
      context.setLineDash([6 * pixel, 4 * pixel]);
      context.strokeStyle = "#ffd23f";
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    // SEG outlines: each segment in its colour over a dark edge (the mask's outline only,
    // so the anatomy inside stays visible).
    segments.forEach((segment) => {
      context.globalAlpha = this.opacity.seg;
      context.setLineDash(segment.dashed ? [8 * pixel, 5 * pixel] : []);
      context.beginPath();
      segment.contours.forEach((line) => {
        line.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
      });
      context.strokeStyle = "rgba(0, 0, 0, 0.7)";
      context.lineWidth = 4 * pixel;
      context.stroke();
      context.strokeStyle = segment.colour;
      context.lineWidth = 2 * pixel;
      context.stroke();
    });
    context.restore();
  }

  setLayer(name, on) {
    this.show[name] = on;
    const box = this.root.querySelector('input[data-layer="' + name + '"]');
    if (box) { box.checked = on; }
    this.viewport.render();
  }

  setOpacity(name, amount) {
    this.opacity[name] = Math.max(0, Math.min(1, amount));
    const slider = this.root.querySelector('input[data-opacity="' + name + '"]');
    if (slider) { slider.value = String(Math.round(this.opacity[name] * 100)); }
    this.viewport.render();
  }

  // -- image controls -----------------------------------------------------------------
  preset(index) {
    if (index === 0 || !this.presets[index - 1]) {
      const invert = this.inverted();
      this.viewport.resetProperties();
      this.viewport.setProperties({ invert });
    } else {
      const p = this.presets[index - 1];
      this.viewport.setProperties({
        voiRange: utilities.windowLevel.toLowHighRange(p.width, p.center),
      });
    }
    this.viewport.render();
    const name = index === 0 || !this.presets[index - 1] ? "image" : this.presets[index - 1].name;
    this.root.querySelector("#viewer-preset").value = String(index);
    this.status.dataset.window = name;
  }

  inverted() {
    return Boolean(this.viewport.getProperties().invert);
  }

  invert() {
    this.viewport.setProperties({ invert: !this.inverted() });
    this.viewport.render();
  }

  zoom(factor) {
    this.viewport.setZoom(this.viewport.getZoom() * factor);
    this.viewport.render();
  }

  reset() {
    this.viewport.resetCamera();
    this.viewport.resetProperties();
    this.viewport.render();
    this.root.querySelector("#viewer-preset").value = "0";
  }

  toggleRuler() {
    const { MouseBindings } = ToolEnums;
    this.measuring = !this.measuring && Boolean(this.images[this.index].spacing);
    if (this.measuring) {
      this.tools.setToolPassive(WindowLevelTool.toolName);
      this.tools.setToolActive(LengthTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    } else {
      this.tools.setToolPassive(LengthTool.toolName);
      this.tools.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    }
    this.root.querySelector('[data-action="ruler"]').setAttribute("aria-pressed", String(this.measuring));
  }

  readPixel(event) {
    const d = this.images[this.index];
    const image = this.viewport.getCornerstoneImage && this.viewport.getCornerstoneImage();
    if (!d || !image) { return; }
    const rect = this.element.getBoundingClientRect();
    const world = this.viewport.canvasToWorld([event.clientX - rect.left, event.clientY - rect.top]);
    const [col, row] = utilities.worldToImageCoords(d.imageId, world).map(Math.floor);
    if (col < 0 || row < 0 || col >= d.columns || row >= d.rows) {
      this.readout.textContent = "";
      return;
    }
    const pixels = image.getPixelData();
    const at = (row * d.columns + col) * (image.numberOfComponents || 1);
    const shown = image.numberOfComponents === 3
      ? "RGB " + pixels[at] + " " + pixels[at + 1] + " " + pixels[at + 2]
      : String(Math.round(pixels[at] * 100) / 100);
    const mm = d.spacing
      ? " (" + (col * d.spacing[1]).toFixed(1) + ", " + (row * d.spacing[0]).toFixed(1) + " mm)"
      : "";
    this.readout.textContent = "x " + col + " y " + row + mm + " · value " + shown;
  }

  bindControls() {
    const act = {
      invert: () => this.invert(),
      reset: () => this.reset(),
      "zoom-in": () => this.zoom(1.25),
      "zoom-out": () => this.zoom(0.8),
      ruler: () => this.toggleRuler(),
      next: () => this.open(this.index + 1),
      previous: () => this.open(this.index - 1),
    };
    this.root.querySelectorAll("[data-action]").forEach((button) => {
      button.addEventListener("click", () => act[button.dataset.action]());
    });
    const select = this.root.querySelector("#viewer-preset");
    select.addEventListener("change", () => this.preset(Number(select.value)));
    this.root.querySelectorAll("input[data-layer]").forEach((box) => {
      box.addEventListener("change", () => this.setLayer(box.dataset.layer, box.checked));
    });
    this.root.querySelectorAll("input[data-opacity]").forEach((slider) => {
      slider.addEventListener("input", () => this.setOpacity(slider.dataset.opacity, Number(slider.value) / 100));
    });
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) { return; }
      const tag = (event.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "select" || tag === "textarea") { return; }
      const key = event.key;
      if (key >= "0" && key <= "9") { this.preset(Number(key)); }
      else if (key === "i") { this.invert(); }
      else if (key === "r") { this.reset(); }
      else if (key === "+" || key === "=") { this.zoom(1.25); }
      else if (key === "-") { this.zoom(0.8); }
      else if (key === "m") { this.toggleRuler(); }
      else if (key === "n") { this.open(this.index + 1); }
      else if (key === "p") { this.open(this.index - 1); }
      else if (key === "v") { this.setLayer("heatmap", !this.show.heatmap); }
      else if (key === "e") { this.setLayer("contour", !this.show.contour); }
      else if (key === "x") { this.setLayer("box", !this.show.box); }
      else if (key === "s") { this.setLayer("seg", !this.show.seg); }
      else if (key === "[") { this.setOpacity("heatmap", this.opacity.heatmap - 0.1); }
      else if (key === "]") { this.setOpacity("heatmap", this.opacity.heatmap + 0.1); }
      else { return; }
      event.preventDefault();
    });
  }
}

export function renderingMode() {
  return getShouldUseCPURendering() ? "cpu" : "gpu";
}

function boot() {
  const root = document.getElementById("viewer");
  if (!root) { return; }
  const viewer = new StudyViewer(root);
  window.overreadViewer = viewer;
  viewer.renderingMode = renderingMode;
  viewer.start().catch((error) => {
    root.dataset.failed = "true";
    root.querySelector("#viewer-status").textContent = "The viewer could not start: " + error.message;
  });
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", boot);
} else {
  boot();
}
