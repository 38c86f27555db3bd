// Hand-written SVG charts: lines over time, horizontal bars, intervals.
// Each returns markup; each chart is an image with a text label, and the
// figures it draws are also in a table or its title for screen readers.

import { esc } from "./format.js";

// Colours that keep 3:1 contrast against the white background.
export const PALETTE = ["#1f5fbf", "#c0392b", "#1e7d32", "#8e44ad", "#b35900", "#00707a", "#6b6b00", "#a0306b"];

const W = 640;
const H = 200;
const PAD = { left: 56, right: 12, top: 10, bottom: 26 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

// series: [{name, points: [[timeMs, value], ...]}]; format: value -> label.
export function lineChart(label, series, format, fromMs, toMs) {
  const plotted = series.filter((s) => s.points.length);
  if (!plotted.length) {
    return `<p class="empty">${esc(label)}: no data in this range.</p>`;
  }
  const max = niceMax(Math.max(...plotted.flatMap((s) => s.points.map((p) => p[1] || 0))));
  const span = Math.max(1, toMs - fromMs);
  const x = (t) => PAD.left + ((t - fromMs) / span) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - ((v || 0) / max) * (H - PAD.top - PAD.bottom);
  const grid = [0, 0.5, 1]
    .map((f) => {
      const v = max * f;
      return `<line class="grid" x1="${PAD.left}" x2="${W - PAD.right}" y1="${y(v)}" y2="${y(v)}"/>` +
        `<text class="axis" x="${PAD.left - 4}" y="${y(v) + 4}" text-anchor="end">${esc(format(v))}</text>`;
    })
    .join("");
  const time = (t) => new Date(t).toISOString().slice(span > 2 * 86400e3 ? 5 : 11, span > 2 * 86400e3 ? 10 : 16);
  const ticks = [fromMs, (fromMs + toMs) / 2, toMs]
    .map((t, i) => `<text class="axis" x="${x(t)}" y="${H - 6}" text-anchor="${["start", "middle", "end"][i]}">${time(t)}</text>`)
    .join("");
  const lines = plotted
    .map((s, i) => {
      const colour = PALETTE[i % PALETTE.length];
      const path = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      const dots = s.points.length === 1
        ? `<circle cx="${x(s.points[0][0])}" cy="${y(s.points[0][1])}" r="3" fill="${colour}"/>`
        : "";
      return `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${path}"><title>${esc(s.name)}</title></polyline>${dots}`;
    })
    .join("");
  const legend = plotted
    .map((s, i) => `<li><span class="swatch" data-colour="${i % PALETTE.length}"></span>${esc(s.name)}</li>`)
    .join("");
  return `<figure class="chart"><svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(label)}">` +
    `<title>${esc(label)}</title>${grid}${ticks}${lines}</svg>` +
    `<figcaption>${esc(label)}<ul class="legend">${legend}</ul></figcaption></figure>`;
}

// rows: [{name, value, text}] drawn as bars scaled to the largest.
export function barChart(label, rows, attrs = "") {
  if (!rows.length) return `<p class="empty">${esc(label)}: nothing in this range.</p>`;
  const max = Math.max(...rows.map((r) => r.value), 0) || 1;
  const body = rows
    .map((r) => {
      const width = Math.max(0, (r.value / max) * 100).toFixed(2);
      return `<tr data-name="${esc(r.name)}" data-value="${r.value}"><th scope="row">${esc(r.name)}</th>` +
        `<td class="bar-cell"><svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">` +
        `<rect width="${width}" height="10"/></svg></td><td class="num">${esc(r.text)}</td></tr>`;
    })
    .join("");
  return `<table class="bars" ${attrs}><caption>${esc(label)}</caption><tbody>${body}</tbody></table>`;
}

// One bar of spend against a limit; over the limit shows red and full.
export function budgetBar(spent, limit) {
  if (limit == null) {
    return `<svg class="bar budget" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true"><rect class="track" width="100" height="10"/></svg>`;
  }
  const share = limit > 0 ? spent / limit : spent > 0 ? Infinity : 0;
  const level = share >= 1 ? "over" : share >= 0.8 ? "near" : "ok";
  const width = Math.min(100, share * 100).toFixed(2);
  return `<svg class="bar budget ${level}" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">` +
    `<rect class="track" width="100" height="10"/><rect class="fill" width="${width}" height="10"/></svg>`;
}

// Confidence intervals of several variants on one shared axis.
export function intervals(label, rows, format) {
  const drawn = rows.filter((r) => r.ci && r.ci.length === 2);
  if (!drawn.length) return "";
  const lo = Math.min(...drawn.map((r) => r.ci[0]));
  const hi = Math.max(...drawn.map((r) => r.ci[1]));
  const span = hi - lo || 1;
  const w = 320;
  const rowH = 18;
  const x = (v) => 8 + ((v - lo) / span) * (w - 16);
  const marks = drawn
    .map((r, i) => {
      const cy = 10 + i * rowH;
      const colour = PALETTE[i % PALETTE.length];
      return `<g><title>${esc(r.modelId)}: ${esc(format(r.mean))} [${esc(format(r.ci[0]))}, ${esc(format(r.ci[1]))}]</title>` +
        `<line x1="${x(r.ci[0])}" x2="${x(r.ci[1])}" y1="${cy}" y2="${cy}" stroke="${colour}" stroke-width="3"/>` +
        (r.mean == null ? "" : `<circle cx="${x(r.mean)}" cy="${cy}" r="4" fill="${colour}"/>`) + "</g>";
    })
    .join("");
  return `<svg class="intervals" viewBox="0 0 ${w} ${drawn.length * rowH + 4}" role="img" aria-label="${esc(label)}">${marks}</svg>`;
}
