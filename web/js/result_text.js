// Merge and convert nodes: show the report (kept energy, relative error) after execution.
import { addPanel, app, chainCallback } from "./common.js";

const NODES = new Set(["HadaKronMergeIntoModel", "HadaKronSaveMergedModel", "HadaKronCombineAdapters",
  "HadaKronToLoRA", "HadaKronResizeLoRA", "HadaKronConvertFormat", "HadaKronConvertZImageQKV",
  "HadaKronConvertHV15QKV", "HadaKronSaveAdapter", "HadaKronLoadAdapter", "HadaKronDatasetFromFolder"]);

app.registerExtension({
  name: "hadakron.resultText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    chainCallback(nodeType.prototype, "onExecuted", function (output) {
      const text = output?.text?.join("\n");
      if (!text) return;
      this.hadakronResult ??= addPanel(this, "result", "hadakron-result");
      this.hadakronResult.textContent = text;
    });
  },
});
window.hadakronWeb = { ...(window.hadakronWeb || {}), resultText: true };
