// Usage: what the account used over a range of days (this month by default), drawn as a chart of
// audio seconds per day by the page's own code (an SVG, no library, nothing from another origin),
// with the numbers by day and by key, and this month's quotas with what is left of them.

import { getJson } from "./api.js";
import { $, element, notify, seconds, when } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const UNITS = { audio_seconds: "seconds of audio", characters: "characters", generations: "generations" };

export function setUp() {
  $("#usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
}

export async function show() {
  if (!$("#usage-end").value) {
    const today = new Date().toISOString().slice(0, 10); // UTC days, as the API counts them
    $("#usage-end").value = today;
    $("#usage-start").value = `${today.slice(0, 8)}01`;
  }
  await refresh();
}

async function refresh() {
  $("#usage-error").textContent = "";
  const range = { start_date: $("#usage-start").value, end_date: $("#usage-end").value };
  let byDay, byKey;
  try {
    [byDay, byKey] = await Promise.all([
      getJson("/v1/usage", { query: { ...range, group_by: "day" } }),
      getJson("/v1/usage", { query: { ...range, group_by: "key" } }),
    ]);
  } catch (error) {
    if (error.param) $("#usage-error").textContent = error.describe();
    else notify(`The usage could not be loaded. ${error.describe()}`);
    return;
  }
  renderQuota(byDay.quota);
  renderChart(byDay);
  renderTotals(byDay);
  renderTable("#usage-days", byDay.buckets.map((bucket) => [bucket.date, bucket]));
  renderTable("#usage-keys", byKey.buckets.map((bucket) => [bucket.key_id ? `${bucket.key_name || "(no name)"} (${bucket.key_prefix}…)` : "before keys had ids", bucket]));
}

function renderQuota(quota) {
  const list = $("#quotas");
  list.replaceChildren(
    ...quota.quotas.map((item) => {
      const id = `quota-${item.name}`;
      return element("li", { class: "quota", dataset: { quota: item.name } },
        element("label", { for: id }, `${number(item.remaining)} of ${number(item.limit)} ${UNITS[item.name] || item.name} left`),
        element("meter", { id, min: 0, max: item.limit, value: Math.min(item.used, item.limit), low: item.limit * 0.8, high: item.limit * 0.95, optimum: 0 }),
        element("span", { class: "meta" }, `${number(item.used)} used`));
    }),
  );
  $("#quota-none").hidden = quota.quotas.length > 0;
  $("#quota-reset").textContent = quota.quotas.length ? `The quotas start afresh on ${when(quota.reset_time)}.` : "";
}

function renderTotals(usage) {
  const total = usage.total;
  const facts = [
    ["Generations", number(total.generations)],
    ["Characters", number(total.characters)],
    ["Audio", seconds(total.audio_seconds)],
    ["Synthesis", seconds(total.synthesis_seconds)],
    ["Samples stored", `${number(total.samples_stored)} (${bytes(total.sample_bytes)})`],
    ["Samples kept now", `${number(usage.stored_samples)} (${bytes(usage.stored_sample_bytes)})`],
  ];
  $("#usage-totals").replaceChildren(
    ...facts.flatMap(([term, value]) => [element("dt", {}, term), element("dd", { dataset: { total: term.toLowerCase() } }, value)]),
  );
}

function renderTable(selector, rows) {
  const body = $(`${selector} tbody`);
  body.replaceChildren(
    ...rows.map(([label, bucket]) =>
      element("tr", {},
        element("th", { scope: "row" }, label),
        element("td", {}, number(bucket.generations)),
        element("td", {}, number(bucket.characters)),
        element("td", {}, seconds(bucket.audio_seconds)),
        element("td", {}, seconds(bucket.synthesis_seconds)),
        element("td", {}, `${number(bucket.samples_stored)} (${bytes(bucket.sample_bytes)})`))),
  );
  if (!rows.length) body.append(element("tr", {}, element("td", { colspan: 6, class: "hint" }, "Nothing in this range.")));
}

// One bar per day of the range (days without usage too), its height the audio seconds made that day.
function renderChart(usage) {
  const days = daysOf(usage.start_date, usage.end_date);
  const values = new Map(usage.buckets.map((bucket) => [bucket.date, bucket]));
  const most = Math.max(1, ...usage.buckets.map((bucket) => bucket.audio_seconds || 0));
  const width = 640;
  const height = 180;
  const bottom = 24;
  const step = width / days.length;
  const svg = svgElement("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img",
    "aria-label": `Audio generated per day, ${usage.start_date} to ${usage.end_date}: ${seconds(usage.total.audio_seconds)} in all, at most ${seconds(most)} a day`,
  });
  svg.append(svgElement("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }));
  days.forEach((day, index) => {
    const audio = values.get(day)?.audio_seconds || 0;
    const tall = ((height - bottom - 8) * audio) / most;
    const bar = svgElement("rect", {
      x: index * step + step * 0.15, y: height - bottom - tall, width: step * 0.7, height: tall, class: "bar",
      "data-day": day, "data-audio-seconds": audio,
    });
    bar.append(svgElement("title", {}, `${day}: ${seconds(audio)}, ${number(values.get(day)?.generations || 0)} generations`));
    svg.append(bar);
    if (days.length <= 16 || index % Math.ceil(days.length / 8) === 0) {
      svg.append(svgElement("text", { x: index * step + step / 2, y: height - 6, class: "tick" }, day.slice(5)));
    }
  });
  svg.append(svgElement("text", { x: 4, y: 14, class: "tick" }, `${seconds(most)}`));
  $("#usage-chart").replaceChildren(svg);
}

function svgElement(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function daysOf(start, end) {
  const days = [];
  for (let day = new Date(`${start}T00:00:00Z`); day <= new Date(`${end}T00:00:00Z`); day.setUTCDate(day.getUTCDate() + 1)) {
    days.push(day.toISOString().slice(0, 10));
  }
  return days;
}

function number(value) {
  return Number(value || 0).toLocaleString("en");
}

function bytes(value) {
  const size = Number(value || 0);
  if (size < 1024) return `${size} B`;
  if (size < 1024 ** 2) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 ** 2).toFixed(1)} MiB`;
}
