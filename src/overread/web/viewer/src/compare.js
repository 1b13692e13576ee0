// overread prior comparison: the current study and a prior of the same patient side by
// side, two Cornerstone3D viewports in one rendering engine, fed by the gateway's
// WADO-RS like the study viewer. Window/level and zoom/pan are linked by
// Cornerstone3D's own synchronizers (a change in one viewport applies to the other),
// and the link can be switched off (checkbox or key `s`).
import {
  RenderingEngine,
  Enums,
  imageLoader,
  init as initCore,
  metaData,
  utilities,
} from "@cornerstonejs/core";
import {
  init as initTools,
  addTool,
  ToolGroupManager,
  WindowLevelTool,
  PanTool,
  ZoomTool,
  synchronizers,
  Enums as ToolEnums,
} from "@cornerstonejs/tools";
import { SCHEME, describe, described, provide, overreadImageLoader } from "./viewer.js";

const ENGINE_ID = "overread-compare-engine";
const TOOL_GROUP_ID = "overread-compare-tools";
const SIDES = ["current", "prior"];

async function studyImages(metadataUrl, base) {
  const response = await fetch(metadataUrl, {
    credentials: "same-origin",
    headers: { Accept: "application/dicom+json" },
  });
  if (!response.ok) { throw new Error("study metadata: HTTP " + response.status); }
  const headers = await response.json();
  const images = headers
    .map((h) => describe(h, base))
    .filter((d) => d.rows > 0 && d.columns > 0)
    .sort((a, b) => a.seriesNumber - b.seriesNumber || a.series.localeCompare(b.series) ||
      a.instanceNumber - b.instanceNumber);
  images.forEach((d) => described.set(d.imageId, d));
  if (!images.length) { throw new Error("no image in the study"); }
  return images;
}

class PriorComparison {
  constructor(root) {
    this.root = root;
    this.presets = JSON.parse(root.dataset.presets || "[]");
    this.status = root.querySelector("#compare-status");
    this.viewports = {};
    this.images = {};
    this.linked = true;
  }

  async start() {
    initCore();
    initTools();
    imageLoader.registerImageLoader(SCHEME, overreadImageLoader);
    metaData.addProvider(provide, 10000);
    const base = this.root.dataset.dicomweb;
    for (const side of SIDES) {
      this.images[side] = await studyImages(this.root.dataset[side + "Metadata"], base);
    }
    this.engine = new RenderingEngine(ENGINE_ID);
    this.engine.setViewports(SIDES.map((side) => ({
      viewportId: "overread-" + side,
      type: Enums.ViewportType.STACK,
      element: this.root.querySelector("#compare-" + side),
      defaultOptions: { background: [0, 0, 0] },
    })));
    SIDES.forEach((side) => {
      this.viewports[side] = this.engine.getViewport("overread-" + side);
      const element = this.root.querySelector("#compare-" + side);
      element.addEventListener("contextmenu", (event) => event.preventDefault());
      new ResizeObserver(() => this.engine.resize(true, false)).observe(element);
    });
    this.setUpTools();
    for (const side of SIDES) {
      const reference = this.root.dataset[side + "Reference"];
      const at = this.images[side].findIndex((d) => d.sop === reference);
      const d = this.images[side][at >= 0 ? at : 0];
      await this.viewports[side].setStack([d.imageId], 0);
      this.viewports[side].render();
      this.root.querySelector("#compare-" + side + "-caption").textContent =
        d.columns + " × " + d.rows + (d.spacing ? " · " + d.spacing[1] + " mm/px" : "");
    }
    this.linkSynchronizers();
    this.bindControls();
    this.status.textContent = this.linkText();
    this.root.dataset.ready = "true";
  }

  setUpTools() {
    [WindowLevelTool, PanTool, ZoomTool].forEach((tool) => addTool(tool));
    const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
    [WindowLevelTool, PanTool, ZoomTool].forEach((tool) => group.addTool(tool.toolName));
    SIDES.forEach((side) => group.addViewport("overread-" + side, ENGINE_ID));
    const { MouseBindings } = ToolEnums;
    group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  }

  linkSynchronizers() {
    this.voiSync = synchronizers.createVOISynchronizer("overread-compare-voi", {
      syncInvertState: true,
      syncColormap: false,
    });
    this.zoomSync = synchronizers.createZoomPanSynchronizer("overread-compare-zoom");
    [this.voiSync, this.zoomSync].forEach((sync) => {
      SIDES.forEach((side) => sync.add({ renderingEngineId: ENGINE_ID, viewportId: "overread-" + side }));
    });
  }

  linkText() {
    return this.linked
      ? "Window/level and zoom are linked: a change in one image applies to the other."
      : "Not linked: each image keeps its own window/level and zoom.";
  }

  setLinked(on) {
    this.linked = on;
    this.voiSync.setEnabled(on);
    this.zoomSync.setEnabled(on);
    this.root.querySelector("#compare-link").checked = on;
    this.root.dataset.linked = String(on);
    this.status.textContent = this.linkText();
  }

  each(change) {
    SIDES.forEach((side) => {
      change(this.viewports[side]);
      this.viewports[side].render();
    });
  }

  preset(index) {
    const p = this.presets[index - 1];
    if (index === 0 || !p) {
      this.each((viewport) => viewport.resetProperties());
    } else {
      const voiRange = utilities.windowLevel.toLowHighRange(p.width, p.center);
      this.each((viewport) => viewport.setProperties({ voiRange }));
    }
    this.root.querySelector("#compare-preset").value = String(p ? index : 0);
  }

  zoom(factor) {
    this.each((viewport) => viewport.setZoom(viewport.getZoom() * factor));
  }

  reset() {
    this.each((viewport) => {
      viewport.resetCamera();
      viewport.resetProperties();
    });
    this.root.querySelector("#compare-preset").value = "0";
  }

  invert() {
    this.each((viewport) => viewport.setProperties({ invert: !viewport.getProperties().invert }));
  }

  bindControls() {
    const link = this.root.querySelector("#compare-link");
    link.addEventListener("change", () => this.setLinked(link.checked));
    const select = this.root.querySelector("#compare-preset");
    select.addEventListener("change", () => this.preset(Number(select.value)));
    const act = {
      invert: () => this.invert(),
      reset: () => this.reset(),
      "zoom-in": () => this.zoom(1.25),
      "zoom-out": () => this.zoom(0.8),
    };
    this.root.querySelectorAll("[data-compare-action]").forEach((button) => {
      button.addEventListener("click", () => act[button.dataset.compareAction]());
    });
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) { return; }
      const tag = (event.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "select" || tag === "textarea") { return; }
      const key = event.key;
      if (key >= "0" && key <= "9") { this.preset(Number(key)); }
      else if (key === "s") { this.setLinked(!this.linked); }
      else if (key === "i") { this.invert(); }
      else if (key === "r") { this.reset(); }
      else if (key === "+" || key === "=") { this.zoom(1.25); }
      else if (key === "-") { this.zoom(0.8); }
      else { return; }
      event.preventDefault();
    });
  }
}

function boot() {
  const root = document.getElementById("compare");
  if (!root) { return; }
  const comparison = new PriorComparison(root);
  window.overreadComparison = comparison;
  comparison.start().catch((error) => {
    root.dataset.failed = "true";
    root.querySelector("#compare-status").textContent =
      "The comparison viewer could not start: " + error.message;
  });
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", boot);
} else {
  boot();
}
