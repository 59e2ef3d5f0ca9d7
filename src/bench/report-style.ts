/**
 * How the HTML report draws each series: a colour, a marker shape and a dash pattern per
 * transport, so every line stays distinguishable in grey print and where two lines coincide
 * (native under bypass). Transports it does not know get a stable combination from their name.
 * Also the small SVG/HTML helpers the report's files share (escaping, number formatting).
 */

// ---- escaping and numbers -------------------------------------------------------------------

/**
 * Escape text for HTML content and double- or single-quoted attribute values. Takes any value:
 * a rows file is written by a guest (rank 0 of `run --out`), and a field the row check does
 * not look at (a breakdown's stage) may be a number or an object; it shows as its text.
 */
export function escapeHtml(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** JSON safe inside a `<script>` element: no `<`, `>` or `&` survive literally. */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** A number in an SVG attribute: 2 decimals are plenty for coordinates. */
export function n2(x: number): string {
  return String(Math.round(x * 100) / 100);
}

/** Rough width of a label in the report's 12 px sans-serif (wide enough for capitals and digits). */
export function textWidth(s: string, px = 12): number {
  return Math.ceil(s.length * px * 0.62);
}

// ---- series styles --------------------------------------------------------------------------

export type MarkerShape = "circle" | "square" | "triangle" | "triangle-down" | "diamond" | "cross" | "plus";

export interface SeriesStyle {
  color: string;
  marker: MarkerShape;
  /** Hollow markers let a filled one drawn at the same point show through. */
  filled: boolean;
  /** SVG stroke-dasharray, or "" for a solid line. */
  dash: string;
}

/**
 * The project's own transports first (native solid with hollow circles, bypass dashed with
 * filled squares on top of it: when the two coincide, both still show), then the baselines.
 */
const KNOWN: Record<string, SeriesStyle> = {
  native: { color: "#1f77b4", marker: "circle", filled: false, dash: "" },
  bypass: { color: "#d62728", marker: "square", filled: true, dash: "9 4" },
  split: { color: "#2ca02c", marker: "triangle", filled: true, dash: "2 3" },
  openmpi: { color: "#000000", marker: "diamond", filled: true, dash: "12 3 3 3" },
  "raw-sab": { color: "#7f7f7f", marker: "diamond", filled: false, dash: "1 3" },
  "raw-relay": { color: "#bcbd22", marker: "triangle-down", filled: false, dash: "6 3 1 3" },
  postmessage: { color: "#9467bd", marker: "cross", filled: true, dash: "4 2" },
  "postmessage-transfer": { color: "#7b4173", marker: "plus", filled: true, dash: "4 2 1 2" },
  "raw-tcp": { color: "#8c564b", marker: "square", filled: false, dash: "10 3 2 3 2 3" },
  "raw-chain": { color: "#c49c94", marker: "triangle", filled: false, dash: "6 2" },
  memcpy: { color: "#17becf", marker: "plus", filled: true, dash: "1 2" },
  evtchn: { color: "#ff7f0e", marker: "circle", filled: true, dash: "" },
  ring: { color: "#e377c2", marker: "diamond", filled: true, dash: "" },
};

const FALLBACK_COLORS = [
  "#393b79",
  "#637939",
  "#8c6d31",
  "#843c39",
  "#3182bd",
  "#e6550d",
  "#31a354",
  "#756bb1",
];
const SHAPES: MarkerShape[] = ["circle", "square", "triangle", "triangle-down", "diamond", "cross", "plus"];
const DASHES = ["", "8 3", "2 2", "8 3 2 3", "12 4", "4 4"];

/** The style of a transport: fixed for the known ones, derived from the name for the others. */
export function styleOf(transport: string): SeriesStyle {
  const known = KNOWN[transport];
  if (known) return known;
  let h = 0;
  for (const ch of transport) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return {
    color: FALLBACK_COLORS[h % FALLBACK_COLORS.length],
    marker: SHAPES[(h >>> 3) % SHAPES.length],
    filled: ((h >>> 6) & 1) === 0,
    dash: DASHES[(h >>> 7) % DASHES.length],
  };
}

/** Colours of the breakdown's stages (stacked bars, one colour per stage). */
export const STAGE_COLORS = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

/**
 * The SVG element of a marker centred on (x, y), about 2r across; `attrs` are extra attributes
 * (starting with a space) and `inner` its content (a <title> tooltip).
 */
export function markerSvg(
  style: SeriesStyle,
  x: number,
  y: number,
  r: number,
  attrs = "",
  inner = "",
): string {
  const open = style.marker === "cross" || style.marker === "plus";
  const fill = open ? "none" : style.filled ? style.color : "#fff";
  const paint = `fill="${fill}" stroke="${style.color}" stroke-width="${open ? 2 : 1.6}"${attrs}`;
  if (style.marker === "circle")
    return `<circle class="marker" cx="${n2(x)}" cy="${n2(y)}" r="${n2(r)}" ${paint}>${inner}</circle>`;
  const pts = (...xy: [number, number][]) =>
    `M${xy.map(([a, b]) => `${n2(x + a * r)},${n2(y + b * r)}`).join("L")}Z`;
  const d: Record<Exclude<MarkerShape, "circle">, string> = {
    square: pts([-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]),
    triangle: pts([0, -1.15], [1.05, 0.8], [-1.05, 0.8]),
    "triangle-down": pts([0, 1.15], [1.05, -0.8], [-1.05, -0.8]),
    diamond: pts([0, -1.25], [1, 0], [0, 1.25], [-1, 0]),
    cross: `M${n2(x - r)},${n2(y - r)}L${n2(x + r)},${n2(y + r)}M${n2(x - r)},${n2(y + r)}L${n2(x + r)},${n2(y - r)}`,
    plus: `M${n2(x - r * 1.15)},${n2(y)}H${n2(x + r * 1.15)}M${n2(x)},${n2(y - r * 1.15)}V${n2(y + r * 1.15)}`,
  };
  return `<path class="marker" d="${d[style.marker]}" ${paint}>${inner}</path>`;
}
