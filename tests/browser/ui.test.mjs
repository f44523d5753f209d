// The live saga page and Swagger UI, in a real headless Chromium.
//
//   BASE_URL=http://127.0.0.1:8000 CHROMIUM=/usr/bin/chromium OUT=.stack/browser node ui.test.mjs
//
// scripts/browser-test.sh starts a system of its own and runs this (make test).
// Every wait is a condition with a deadline; nothing sleeps.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.BASE_URL ?? "http://127.0.0.1:8000";
const OUT = process.env.OUT ?? ".";
const SETTLE_MS = 30_000;
mkdirSync(OUT, { recursive: true });

const results = [];
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}\n     ${String(e.stack ?? e).split("\n").join("\n     ")}`);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const consoleErrors = [];
// Script errors only: a 4xx the page was made to provoke shows up as a failed resource load.
page.on("pageerror", (e) => consoleErrors.push(String(e)));
page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && consoleErrors.push(m.text()));
const run = Date.now().toString(36);

async function placeThroughTheForm({ value, user, method, installment }) {
  await page.fill("#value", value);
  await page.fill("#user_id", user);
  await page.selectOption("#method", method);
  await page.fill("#installment", String(installment));
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/orders") && r.request().method() === "POST"),
    page.click("#place"),
  ]);
  return response;
}

await check("the saga page places an order and shows it settle APPROVED, with its timeline", async () => {
  await page.goto(`${BASE}/ui`);
  await page.waitForFunction(() => document.querySelector("#connection")?.textContent === "live", null, { timeout: 10_000 });
  // The method list comes from /api/methods.
  await page.waitForSelector("#method option[value=cash]", { state: "attached" });
  const response = await placeThroughTheForm({ value: "250.00", user: `browser-${run}`, method: "credit_card", installment: 3 });
  assert.equal(response.status(), 201);
  const order = await response.json();
  await page.waitForFunction((id) => document.querySelector("#order-id")?.textContent === id, order.id, { timeout: 5_000 });
  await page.waitForFunction(() => document.querySelector("#order-status")?.textContent === "APPROVED", null, { timeout: SETTLE_MS });
  await page.waitForSelector("#timeline li[data-type=status_changed]", { timeout: SETTLE_MS });
  const kinds = await page.$$eval("#timeline li", (lis) => lis.map((li) => li.dataset.type));
  for (const kind of ["order_created", "command_sent", "reply_received", "status_changed"]) {
    assert.ok(kinds.includes(kind), `timeline ${JSON.stringify(kinds)} lacks ${kind}`);
  }
  // It is in the recent orders, settled there too.
  await page.waitForFunction((id) => {
    const row = document.querySelector(`#recent tr[data-id="${id}"]`);
    return row?.textContent.includes("APPROVED");
  }, order.id, { timeout: 5_000 });
  await page.screenshot({ path: join(OUT, "ui-approved.png"), fullPage: true });
});

await check("an invalid user is CANCELED with USER_INVALID, live", async () => {
  const response = await placeThroughTheForm({ value: "10.00", user: `invalid-${run}`, method: "cash", installment: 1 });
  assert.equal(response.status(), 201);
  await page.waitForFunction(() => document.querySelector("#order-status")?.textContent === "CANCELED", null, { timeout: SETTLE_MS });
  assert.equal(await page.textContent("#cancel-reason"), "USER_INVALID");
  await page.screenshot({ path: join(OUT, "ui-canceled.png"), fullPage: true });
});

await check("a bad form shows the API's error naming the field", async () => {
  const response = await placeThroughTheForm({ value: "-5", user: `browser-${run}`, method: "debit_card", installment: 1 });
  assert.equal(response.status(), 422);
  await page.waitForFunction(() => document.querySelector("#form-error")?.textContent.includes("value"), null, { timeout: 5_000 });
});

await check("the page loaded with no script errors", async () => {
  assert.deepEqual(consoleErrors, []);
});

await check("Swagger UI lists every route of the OpenAPI document", async () => {
  const doc = await (await fetch(`${BASE}/api-docs/openapi.json`)).json();
  const expected = Object.entries(doc.paths)
    .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`))
    .sort();
  await page.goto(`${BASE}/swagger-ui/`);
  await page.waitForSelector(".opblock", { timeout: 15_000 });
  const listed = (await page.$$eval(".opblock", (blocks) => blocks.map((b) => {
    const method = b.querySelector(".opblock-summary-method")?.textContent.trim();
    const path = b.querySelector(".opblock-summary-path")?.getAttribute("data-path");
    return `${method} ${path}`;
  }))).sort();
  assert.deepEqual(listed, expected);
});

await check("Swagger UI's Try it out places an order (POST /api/orders answers 201)", async () => {
  const block = page.locator(".opblock-post", { has: page.locator('[data-path="/api/orders"]') });
  await block.locator(".opblock-summary").click();
  await block.locator("button.try-out__btn").click();
  // Swagger UI edits an x-www-form-urlencoded body as a JSON object of the
  // fields and sends it as a form.
  await block.locator("select.content-type").first().selectOption("application/x-www-form-urlencoded");
  const fields = { value: "42.50", user_id: `swagger-${run}`, installment: "2", method: "credit_card" };
  await block.locator("textarea.body-param__text").fill(JSON.stringify(fields, null, 2));
  await block.locator("button.execute").click();
  const status = block.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor({ timeout: 10_000 });
  assert.equal((await status.textContent()).trim(), "201");
  const body = await block.locator(".live-responses-table .response-col_description pre").first().textContent();
  const order = JSON.parse(body);
  assert.equal(order.status, "PROCESSING");
  assert.equal(order.value, "42.50");
  await page.screenshot({ path: join(OUT, "swagger-try-it-out.png"), fullPage: true });
});

await browser.close();
const failed = results.filter((r) => !r.ok).length;
console.log(`\n${results.length - failed} passed, ${failed} failed; screenshots in ${OUT}`);
process.exit(failed ? 1 : 0);
