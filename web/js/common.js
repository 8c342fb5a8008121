// Shared helpers for HadaKron's frontend extensions (plain ES modules, no build step).
export const app = window.comfyAPI.app.app;
export const api = window.comfyAPI.api.api;

// Wrap an existing prototype/instance callback instead of replacing it.
export function chainCallback(object, property, callback) {
  const original = object[property];
  object[property] = function (...args) {
    const result = original?.apply(this, args);
    callback.apply(this, args);
    return result;
  };
}

// A DOM panel widget on a node (text content, scrollable, read-only).
export function addPanel(node, name, className) {
  const element = document.createElement("div");
  element.className = `hadakron-panel ${className}`;
  Object.assign(element.style, {
    font: "11px monospace", whiteSpace: "pre-wrap", overflow: "auto", color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)", padding: "4px", borderRadius: "4px", maxHeight: "220px",
  });
  const widget = node.addDOMWidget(name, "hadakron_panel", element, { serialize: false, hideOnZoom: false });
  widget.computeSize = () => [node.size[0], 120];
  return element;
}

export function formatCounts(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([k, v]) => `${k}: ${v}`).join(", ") : "-";
}
