// Charts as inline SVG: horizontal bars (one series) and grouped columns (several series over
// time). Each SVG is an image with a title and a description, and each chart comes with its
// numbers as a table, so nothing is said by colour or shape alone.

import { h, money, newId, s, table } from "./dom.js";

// Each at least 3:1 against white (WCAG 1.4.11), and told apart by the legend's text too.
export const PALETTE = ["#1f5fa8", "#b45309", "#2f7d32", "#7b3fa0"];

function svgFrame(width, height, title, desc, children) {
  const titleId = newId("chart-title");
  const descId = newId("chart-desc");
  return s(
    "svg",
    {
      viewBox: `0 0 ${width} ${height}`,
      width: "100%",
      role: "img",
      "aria-labelledby": `${titleId} ${descId}`,
      class: "chart",
      preserveAspectRatio: "xMinYMin meet",
    },
    s("title", { id: titleId }, title),
    s("desc", { id: descId }, desc),
    children,
  );
}

function dataTable(caption, headers, rows) {
  const columns = headers.map((label, i) => ({ key: i, label, numeric: i > 0 }));
  return h(
    "details",
    { class: "chart-data" },
    h("summary", {}, `${caption}: the numbers`),
    table({ caption, columns, rows: rows.map((r) => Object.fromEntries(r.entries())) }),
  );
}

/** rows: [{label, value, text?, note?}] as horizontal bars, largest first as given; `text`
 * replaces the formatted value (an unpriced resource is not a zero). */
export function barChart({ title, rows, format = money, unit = "per month" }) {
  const bar = 20;
  const gap = 8;
  const chars = (texts) => Math.max(4, ...texts.map((t) => String(t).length));
  // About 8.4 units per character (digits are the widest) at the chart's 13px: no label or value is cut off.
  const labelWidth = chars(rows.map((r) => r.label)) * 8.4 + 12;
  const valueWidth = chars(rows.map((r) => r.text || format(r.value))) * 8.4 + 12;
  const width = Math.max(400, labelWidth + valueWidth + 160);
  const height = Math.max(1, rows.length) * (bar + gap) + gap;
  const max = Math.max(0, ...rows.map((r) => r.value || 0)) || 1;
  const span = width - labelWidth - valueWidth;
  const shapes = rows.map((r, i) => {
    const y = gap + i * (bar + gap);
    const w = Math.max(2, ((r.value || 0) / max) * span);
    return s(
      "g",
      { class: "bar" },
      s(
        "text",
        {
          x: labelWidth - 8,
          y: y + bar / 2,
          "text-anchor": "end",
          "dominant-baseline": "middle",
          class: "label",
        },
        r.label,
      ),
      s("rect", { x: labelWidth, y, width: w, height: bar, rx: 2, fill: PALETTE[0] }),
      s(
        "text",
        { x: labelWidth + w + 6, y: y + bar / 2, "dominant-baseline": "middle", class: "value" },
        r.text || format(r.value),
      ),
    );
  });
  const desc = rows.length
    ? rows.map((r) => `${r.label}: ${r.text || format(r.value)}`).join("; ")
    : "No data yet.";
  const figure = h(
    "figure",
    { class: "chart-box" },
    h("figcaption", {}, title),
    rows.length
      ? svgFrame(width, height, `${title} (${unit})`, desc, shapes)
      : h("p", { class: "muted" }, "No data yet."),
    dataTable(
      title,
      ["Name", `Amount (${unit})`, "Resources"],
      rows.map((r) => [r.label, r.text || format(r.value), r.note ?? ""]),
    ),
  );
  return figure;
}

/**
 * Grouped columns: categories along the bottom (months), one column per series in each.
 * series: [{name, values: [number per category]}].
 */
export function columnChart({ title, categories, series, format = money }) {
  const width = 640;
  const height = 220;
  const left = 70;
  const bottom = 40;
  const top = 16;
  const plotHeight = height - bottom - top;
  const plotWidth = width - left - 10;
  const max = Math.max(0, ...series.flatMap((one) => one.values)) || 1;
  const group = plotWidth / Math.max(1, categories.length);
  const column = Math.min(28, (group - 12) / Math.max(1, series.length));
  const ticks = [0, 0.5, 1].map((f) => f * max);
  const axis = ticks.map((t) => {
    const y = top + plotHeight - (t / max) * plotHeight;
    return s(
      "g",
      {},
      s("line", { x1: left, x2: width - 10, y1: y, y2: y, class: "grid" }),
      s(
        "text",
        { x: left - 6, y, "text-anchor": "end", "dominant-baseline": "middle", class: "tick" },
        format(t),
      ),
    );
  });
  const columns = categories.map((category, c) => {
    const x0 = left + c * group + (group - column * series.length) / 2;
    return s(
      "g",
      {},
      series.map((one, i) => {
        const v = one.values[c] || 0;
        const hgt = (v / max) * plotHeight;
        return s(
          "rect",
          {
            x: x0 + i * column,
            y: top + plotHeight - hgt,
            width: column - 2,
            height: Math.max(hgt, v ? 1 : 0),
            fill: PALETTE[i % PALETTE.length],
          },
          s("title", {}, `${one.name}, ${category}: ${format(v)}`),
        );
      }),
      s(
        "text",
        {
          x: left + c * group + group / 2,
          y: height - bottom + 18,
          "text-anchor": "middle",
          class: "tick",
        },
        category,
      ),
    );
  });
  const desc = categories
    .map(
      (category, c) =>
        `${category}: ${series.map((one) => `${one.name} ${format(one.values[c] || 0)}`).join(", ")}`,
    )
    .join("; ");
  const legend = h(
    "ul",
    { class: "legend" },
    series.map((one, i) =>
      h(
        "li",
        {},
        s(
          "svg",
          { width: 14, height: 14, "aria-hidden": "true", focusable: "false" },
          s("rect", { width: 14, height: 14, fill: PALETTE[i % PALETTE.length] }),
        ),
        one.name,
      ),
    ),
  );
  return h(
    "figure",
    { class: "chart-box wide" },
    h("figcaption", {}, title),
    categories.length
      ? [svgFrame(width, height, title, desc || "No data yet.", [axis, columns]), legend]
      : h("p", { class: "muted" }, "No data yet."),
    dataTable(
      title,
      ["Month", ...series.map((one) => one.name)],
      categories.map((category, c) => [
        category,
        ...series.map((one) => format(one.values[c] || 0)),
      ]),
    ),
  );
}
