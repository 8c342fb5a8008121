// Browser checks against a real ComfyUI server with HadaKron installed (headless Debian Chromium).
// Usage: node ui_check.mjs <server url> <artifact dir> <adapter file name> [workflow.json]
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [url, outDir, adapterName, workflowPath] = process.argv.slice(2);
fs.mkdirSync(outDir, { recursive: true });
const results = {};
const fail = (message) => { throw new Error(message); };

async function openApp(page) {
  await page.goto(url);
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 60000 });
  await page.waitForFunction(() => window.hadakronWeb?.adapterInfo && window.hadakronWeb?.trainChart, null,
    { timeout: 30000 });
}

async function addNodeFromSearch(page, displayName, nodeType) {
  await page.evaluate(() => window.app.graph.clear());
  const canvas = page.locator("canvas#graph-canvas").first();
  const box = await canvas.boundingBox();
  for (let attempt = 0; attempt < 4; attempt += 1) {
    await page.keyboard.press("Escape");
    await page.mouse.dblclick(box.x + box.width / 2, box.y + box.height / 2);
    const search = page.locator('input[placeholder*="Search" i]').first();
    try {
      await search.waitFor({ state: "visible", timeout: 3000 });
      await search.fill(displayName.split("/")[0]);
      await page.waitForTimeout(500);
      await page.keyboard.press("Enter");
      break;
    } catch {
      // the search box occasionally fails to open on the first double-click
    }
  }
  await page.waitForFunction((type) => window.app.graph._nodes.filter((n) => n.type === type).length === 1,
    nodeType, { timeout: 10000 });
}

async function checkLoaderPanel(page) {
  await addNodeFromSearch(page, "Load LoHa/LoKr/LoRA", "HadaKronLoadAdapter");
  await page.evaluate((name) => {
    const node = window.app.graph._nodes.find((n) => n.type === "HadaKronLoadAdapter");
    const widget = node.widgets.find((w) => w.name === "adapter_name");
    widget.value = name;
    widget.callback?.(name);
  }, adapterName);
  await page.waitForFunction(() => [...document.querySelectorAll(".hadakron-adapter-info")]
    .some((el) => el.textContent.includes("algorithms:")), null, { timeout: 20000 });
  results.loaderPanel = await page.evaluate(() =>
    document.querySelector(".hadakron-adapter-info").textContent);
  await page.screenshot({ path: path.join(outDir, "loader-panel.png") });
}

async function runWorkflow(page) {
  const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
  const missing = await page.evaluate(() => window.app.graph._nodes.filter((n) => !n.type || n.has_errors).length);
  if (missing) fail(`workflow has ${missing} nodes with errors`);
  const run = page.locator('button:has-text("Run")').first();
  if (await run.count()) await run.click(); else await page.evaluate(() => window.app.queuePrompt(0, 1));
  await page.waitForFunction(() => (window.hadakronWeb.chartPoints || 0) >= 2, null, { timeout: 240000 });
  results.chartPoints = await page.evaluate(() => window.hadakronWeb.chartPoints);
  await page.evaluate(() => {
    const node = window.app.graph._nodes.find((n) => n.type === "HadaKronTrainAdapter");
    const ds = window.app.canvas.ds;
    ds.scale = 0.9;
    ds.offset[0] = 700 / ds.scale - (node.pos[0] + node.size[0] / 2);
    ds.offset[1] = 860 / ds.scale - (node.pos[1] + node.size[1]);
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: path.join(outDir, "training-chart.png") });
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on("console", (msg) => { if (msg.type() === "error") results.consoleErrors = [...(results.consoleErrors || []), msg.text()]; });
try {
  await openApp(page);
  results.registered = await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types)
    .filter((t) => t.startsWith("HadaKron")));
  if (!results.registered.includes("HadaKronLoadAdapter")) fail("HadaKronLoadAdapter is not registered in the UI");
  await checkLoaderPanel(page);
  if (workflowPath) await runWorkflow(page);
  fs.writeFileSync(path.join(outDir, "ui-results.json"), JSON.stringify(results, null, 2));
  console.log("UI-RESULTS " + JSON.stringify(results));
} catch (error) {
  await page.screenshot({ path: path.join(outDir, "failure.png") }).catch(() => {});
  results.nodesInGraph = await page.evaluate(() => window.app?.graph?._nodes?.map((n) => n.type)).catch(() => null);
  console.log("UI-FAILURE " + JSON.stringify(results));
  throw error;
} finally {
  await browser.close();
}
