/**
 * The README and docs/*.md link to each other, to files of the repository and to headings:
 * every relative link must reach a file that exists, and every #anchor a heading of the
 * markdown file it names, by GitHub's slug rule. The README stays a document for users: the
 * measurement journal, the security model, performance isolation and the design notes live in
 * docs/.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const DOCS = join(REPO, "docs");
const README_MAX_LINES = 1600;

/** The markdown files whose links are checked: the README and every docs/*.md. */
function markdownFiles(): string[] {
  return [
    join(REPO, "README.md"),
    ...readdirSync(DOCS)
      .filter((f) => f.endsWith(".md"))
      .sort()
      .map((f) => join(DOCS, f)),
  ];
}

/** The text with fenced code blocks blanked (their lines kept, so line numbers hold). */
function withoutFences(text: string): string {
  let fence: string | undefined;
  return text
    .split("\n")
    .map((line) => {
      const m = /^ {0,3}(`{3,}|~{3,})/.exec(line);
      if (fence === undefined) {
        if (m) fence = m[1];
        return m ? "" : line;
      }
      if (m?.[1].startsWith(fence) && line.trim() === m[1]) fence = undefined;
      return "";
    })
    .join("\n");
}

/**
 * GitHub's anchor for a heading: the text as rendered (link targets, backticks and emphasis
 * marks dropped), lower case, every character but letters, digits, marks, `-`, `_` and spaces
 * removed, each space a `-`.
 */
function slug(heading: string): string {
  return heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/[`*]/g, "")
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, "")
    .replace(/ /g, "-");
}

/** The anchors of a markdown file's ATX headings, duplicates numbered -1, -2, ... as GitHub does. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of withoutFences(text).split("\n")) {
    const m = /^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

interface Link {
  line: number;
  target: string;
}

/** The relative links of a markdown file (images too), outside code blocks and code spans. */
function links(text: string): Link[] {
  // Code spans may run over a line break, not over a blank line; keep their newlines.
  const body = withoutFences(text).replace(/`[^`]*?`/g, (span) =>
    span.includes("\n\n") ? span : span.replace(/[^\n]/g, " "),
  );
  const out: Link[] = [];
  for (const m of body.matchAll(/\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
    const target = m[1];
    if (/^(https?:|mailto:)/i.test(target)) continue;
    out.push({ line: body.slice(0, m.index).split("\n").length, target });
  }
  return out;
}

/** What is wrong with each relative link of the files, one line each. */
function brokenLinks(files: string[]): string[] {
  const anchorsOf = new Map<string, Set<string>>();
  const anchorsFor = (file: string) => {
    let a = anchorsOf.get(file);
    if (!a) anchorsOf.set(file, (a = anchors(readFileSync(file, "utf8"))));
    return a;
  };
  const broken: string[] = [];
  for (const file of files) {
    const where = relative(REPO, file);
    for (const { line, target } of links(readFileSync(file, "utf8"))) {
      const hash = target.indexOf("#");
      const path = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
      const anchor = hash < 0 ? undefined : decodeURIComponent(target.slice(hash + 1));
      const to = path === "" ? file : join(dirname(file), path);
      if (!existsSync(to)) {
        broken.push(`${where}:${line}: ${target}: no file ${relative(REPO, to)}`);
        continue;
      }
      if (anchor !== undefined && to.endsWith(".md") && !anchorsFor(to).has(anchor))
        broken.push(`${where}:${line}: ${target}: no heading #${anchor} in ${relative(REPO, to)}`);
    }
  }
  return broken;
}

test("GitHub's slugs: punctuation dropped, spaces to dashes, letters kept", () => {
  assert.equal(slug("What `npm start` shows"), "what-npm-start-shows");
  assert.equal(slug("The split path, and across hosts"), "the-split-path-and-across-hosts");
  assert.equal(slug("NAS IS and CG on two ranks (one host)"), "nas-is-and-cg-on-two-ranks-one-host");
  assert.equal(slug("Performance isolation: weights and caps"), "performance-isolation-weights-and-caps");
  assert.equal(slug("The NIC's idle poll adapts"), "the-nics-idle-poll-adapts");
  assert.equal(slug("Speed-up (1 ÷ 2), x+y / z_w é"), "speed-up-1--2-xy--z_w-é");
  assert.deepEqual([...anchors("# A\n## A\n```sh\n# A\n```\n### A\n#### B.\n")], ["a", "a-1", "a-2", "b"]);
});

test("every relative link of the README and docs/*.md reaches a file, and its anchor a heading", () => {
  const files = markdownFiles();
  assert.ok(files.length >= 5, `the README and the docs: ${files.map((f) => relative(REPO, f))}`);
  const all = files.flatMap((f) => links(readFileSync(f, "utf8")));
  assert.ok(all.length > 50, `links found: ${all.length}`);
  assert.deepEqual(brokenLinks(files), []);
});

test("a missing file or heading is found; code and web links are not links to check", () => {
  assert.deepEqual(
    links("[a](x.md#y) `[b](code.md)` [c](https://e.org)\n```\n[d](fenced.md)\n```\n![e](img.png)"),
    [
      { line: 1, target: "x.md#y" },
      { line: 5, target: "img.png" },
    ],
  );
  const dir = mkdtempSync(join(tmpdir(), "myrixen-docs-links-"));
  try {
    writeFileSync(
      join(dir, "a.md"),
      "# Here\n\n[ok](#here) [ok](b.md#there) [no](#gone)\n[no](b.md#nope) [no](c.md)\n",
    );
    writeFileSync(join(dir, "b.md"), "## There\n");
    const broken = brokenLinks([join(dir, "a.md"), join(dir, "b.md")]).map((l) =>
      l.replace(/^[^:]*a\.md:/, "a.md:"),
    );
    assert.deepEqual(broken, [
      `a.md:3: #gone: no heading #gone in ${relative(REPO, join(dir, "a.md"))}`,
      `a.md:4: b.md#nope: no heading #nope in ${relative(REPO, join(dir, "b.md"))}`,
      `a.md:4: c.md: no file ${relative(REPO, join(dir, "c.md"))}`,
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the README stays a document for users", () => {
  const lines = readFileSync(join(REPO, "README.md"), "utf8").split("\n").length;
  assert.ok(lines < README_MAX_LINES, `README.md has ${lines} lines (fewer than ${README_MAX_LINES})`);
  for (const f of ["measurements.md", "security.md", "performance-isolation.md", "design-notes.md"])
    assert.ok(existsSync(join(DOCS, f)), `docs/${f}`);
});
