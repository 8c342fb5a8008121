// Live training chart on the TrainAdapter node: raw and smoothed loss, step/total, lr, ETA.
import { api, app, chainCallback } from "./common.js";

const NODE = "HadaKronTrainAdapter";

export function smooth(values, beta = 0.9) {
  let average = 0;
  return values.map((v, i) => {
    average = beta * average + (1 - beta) * v;
    return average / (1 - beta ** (i + 1));
  });
}

function draw(canvas, state) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, width, height);
  const losses = state.points.map((p) => p.loss);
  if (losses.length) {
    const lo = Math.min(...losses), hi = Math.max(...losses), span = hi - lo || 1;
    const plot = (values, color) => {
      ctx.strokeStyle = color;
      ctx.beginPath();
      values.forEach((v, i) => {
        const x = (i / Math.max(values.length - 1, 1)) * (width - 10) + 5;
        const y = height - 20 - ((v - lo) / span) * (height - 35);
        i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
      });
      ctx.stroke();
    };
    plot(losses, "#5a7fa8");
    plot(smooth(losses), "#f0a030");
  }
  const last = state.points[state.points.length - 1];
  ctx.fillStyle = "#ddd";
  ctx.font = "11px monospace";
  const text = last ? `step ${last.step}/${last.total}  loss ${last.loss.toFixed(4)}  lr ${Number(last.lr).toExponential(2)}` +
    `  ETA ${Math.round(last.eta_s ?? 0)}s` : "waiting for training…";
  ctx.fillText(text, 5, height - 5);
}

function attachChart(node) {
  const canvas = document.createElement("canvas");
  canvas.width = 360;
  canvas.height = 160;
  canvas.className = "hadakron-loss-chart";
  const widget = node.addDOMWidget("loss_chart", "hadakron_chart", canvas, { serialize: false });
  widget.computeSize = () => [node.size[0], 170];
  node.hadakronChart = { canvas, points: [] };
  draw(canvas, node.hadakronChart);
  return node.hadakronChart;
}

function onProgress(event) {
  const detail = event.detail;
  const node = app.graph?.getNodeById?.(Number(detail.node)) ?? app.graph?.getNodeById?.(detail.node);
  if (!node?.hadakronChart) return;
  node.hadakronChart.points.push(detail);
  draw(node.hadakronChart.canvas, node.hadakronChart);
  window.hadakronWeb.chartPoints = (window.hadakronWeb.chartPoints || 0) + 1;
}

async function restoreHistory(node) {
  try {
    const response = await api.fetchApi(`/hadakron/train/history?node=${encodeURIComponent(node.id)}`);
    const { history } = await response.json();
    if (history?.length) {
      node.hadakronChart.points = history;
      draw(node.hadakronChart.canvas, node.hadakronChart);
    }
  } catch (error) {
    console.warn("hadakron: no training history", error);
  }
}

app.registerExtension({
  name: "hadakron.trainChart",
  setup() {
    api.addEventListener("hadakron.train_progress", onProgress);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    chainCallback(nodeType.prototype, "onNodeCreated", function () {
      attachChart(this);
    });
    chainCallback(nodeType.prototype, "onConfigure", function () {
      if (this.hadakronChart) restoreHistory(this);
    });
  },
});
window.hadakronWeb = { ...(window.hadakronWeb || {}), trainChart: true };
