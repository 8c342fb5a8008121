// Adapter info panel: when the adapter widget changes, show what the file is (header-only route).
import { addPanel, api, app, chainCallback, formatCounts } from "./common.js";

const NODES = new Set(["HadaKronLoadAdapter", "HadaKronMergeIntoModel", "HadaKronToLoRA", "HadaKronResizeLoRA",
  "HadaKronConvertFormat", "HadaKronConvertZImageQKV", "HadaKronConvertHV15QKV"]);
const FILE_WIDGETS = ["adapter_name", "adapter_1", "adapter", "input_file"];

export function describe(info) {
  if (info.error) return `⚠ ${info.error}`;
  const meta = Object.entries(info.metadata || {}).map(([k, v]) => `  ${k}: ${v}`).join("\n");
  return [
    `${info.file} — ${info.modules} modules, ${(info.size_bytes / 1048576).toFixed(2)} MiB`,
    `algorithms: ${formatCounts(info.algorithms)}`,
    `ranks: ${formatCounts(info.ranks)}   alphas: ${formatCounts(info.alphas)}`,
    info.lokr_factor != null ? `lokr_factor: ${info.lokr_factor}` : null,
    `family: ${info.family ?? "unknown"}   producer: ${info.producer}`,
    info.family_modules != null ? `modules matching the ${info.family} table: ${info.family_modules}/${info.modules}` : null,
    meta ? `metadata:\n${meta}` : null,
  ].filter(Boolean).join("\n");
}

async function refresh(node, panel, name) {
  if (!name) return;
  panel.textContent = "reading header…";
  try {
    const response = await api.fetchApi(`/hadakron/inspect?file=${encodeURIComponent(name)}`);
    const info = await response.json();
    panel.textContent = describe(info);
    node.hadakronInfo = info;
  } catch (error) {
    panel.textContent = `⚠ ${error}`;
  }
}

app.registerExtension({
  name: "hadakron.adapterInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    chainCallback(nodeType.prototype, "onNodeCreated", function () {
      const widget = this.widgets?.find((w) => FILE_WIDGETS.includes(w.name));
      if (!widget) return;
      const panel = addPanel(this, "adapter_info", "hadakron-adapter-info");
      const node = this;
      chainCallback(widget, "callback", (value) => refresh(node, panel, value));
      setTimeout(() => refresh(node, panel, widget.value), 0);
    });
  },
});
window.hadakronWeb = { ...(window.hadakronWeb || {}), adapterInfo: true };
