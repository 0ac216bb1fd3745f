// Provider usage of a call (what vendors bill) and its cost at the prices the operator enters here.
// Prices are kept in this browser (localStorage), per stage/provider/model, in the unit of the row:
// ASR per minute of audio, LLM per million tokens, TTS per million characters.
import { el } from "./dom.js";

const KEY = "vp_console_prices";
const prices = () => JSON.parse(localStorage.getItem(KEY) || "{}");

function amount(row) {
  if (row.stage === "asr") return [row.asr_seconds / 60, "min"];
  if (row.stage === "tts") return [row.characters / 1e6, "M chars"];
  return [(row.prompt_tokens + row.completion_tokens) / 1e6, "M tokens"];
}

export function usageTable(usage) {
  const rows = usage.by_provider || [];
  if (!rows.length) return el("p", { class: "muted" }, "no provider reported usage");
  const total = el("td", { id: "cost-total" });
  const body = el("tbody");
  const costs = [];
  const refresh = () => {
    const sum = costs.reduce((a, f) => a + f(), 0);
    total.textContent = sum ? sum.toFixed(4) : "—";
  };
  for (const row of rows) {
    const key = `${row.stage}/${row.provider}/${row.model}`;
    const [qty, unit] = amount(row);
    const cost = el("td");
    const price = el("input", { type: "number", min: 0, step: "any", size: 6, value: prices()[key] ?? "" });
    const value = () => qty * (Number(price.value) || 0);
    costs.push(value);
    price.addEventListener("input", () => {
      localStorage.setItem(KEY, JSON.stringify({ ...prices(), [key]: price.value }));
      cost.textContent = value() ? value().toFixed(4) : "—";
      refresh();
    });
    cost.textContent = value() ? value().toFixed(4) : "—";
    body.append(el("tr", {},
      el("td", {}, row.stage), el("td", {}, row.provider), el("td", {}, row.model || "—"),
      el("td", {}, row.requests), el("td", {}, row.failed),
      el("td", {}, row.stage === "asr" ? `${row.asr_seconds} s` : row.stage === "tts" ? `${row.characters} chars`
        : `${row.prompt_tokens} + ${row.completion_tokens} tokens`),
      el("td", {}, price, ` per ${unit}`), cost));
  }
  refresh();
  return el("table", {},
    el("thead", {}, el("tr", {}, ["stage", "provider", "model", "requests", "failed", "amount", "price", "cost"].map((h) => el("th", {}, h)))),
    body, el("tfoot", {}, el("tr", {}, el("td", { colspan: 7 }, "total"), total)));
}
