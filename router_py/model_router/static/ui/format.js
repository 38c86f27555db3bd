// How figures read on the page: one formatter per kind of figure, and the
// small pieces of markup every view shows them in.

const HTML = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => HTML[c]);

export const NONE = "–";

export const int = (n) => (n == null ? NONE : Math.round(n).toLocaleString("en-US"));

// A chart axis's count: 12.5 stays 12.5.
export const count = (n) => n.toLocaleString("en-US", { maximumFractionDigits: 1 });

// Cents once there are dollars; small sums with the digits that tell them apart.
export function usd(n) {
  if (n == null) return NONE;
  const size = Math.abs(n);
  return `$${n.toFixed(size >= 1 || n === 0 ? 2 : size >= 0.01 ? 4 : 6)}`;
}

export const ms = (n) => (n == null ? NONE : `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`);

export const pct = (fraction) => (fraction == null ? NONE : `${(fraction * 100).toFixed(1)}%`);

export const perMinute = (n) => (n == null ? NONE : `${n.toFixed(1)}/min`);

export const ratio = (n) => (n == null ? NONE : `${n.toFixed(2)}×`);

export const pValue = (p) => (p == null ? NONE : p < 0.0001 ? "< 0.0001" : p.toFixed(4));

// "14:02:07" today, "2026-11-28 14:02" before.
export function time(iso) {
  if (!iso) return NONE;
  const d = new Date(iso);
  const text = d.toISOString();
  return d.toDateString() === new Date().toDateString()
    ? text.slice(11, 19)
    : `${text.slice(0, 10)} ${text.slice(11, 16)}`;
}

export function duration(seconds) {
  if (seconds == null) return NONE;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

// A state as a coloured label ("half_open" reads "half-open").
export const badge = (state) =>
  state ? `<span class="badge" data-state="${esc(state)}">${esc(state.replace("_", "-"))}</span>` : NONE;

// A headline figure; `raw` (the unformatted value) goes in data-value.
export const tile = (name, label, text, raw) =>
  `<div class="tile" data-tile="${name}" data-value="${raw ?? ""}"><span class="label">${esc(label)}</span>` +
  `<span class="value">${esc(text)}</span></div>`;
