// A small, safe Markdown renderer for model answers and document passages.
//
// Safety by construction: the output is built with createElement and text nodes only,
// so HTML in the input (<script>, <img onerror>, entities) stays literal text and is never
// parsed. Links keep only http, https and mailto URLs (checked on the URL as the browser
// parses it, so "java\tscript:" or upper case tricks do not pass); images are shown as
// their alt text (nothing is fetched). Supported: headings, paragraphs, line breaks,
// bold, italic, strikethrough, inline code, fenced code, lists (nested), block quotes,
// rules, simple tables, links, autolinks and source citations like [1].

const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);
const MAX_DEPTH = 12;

/** The normalised URL if it is absolute and http(s)/mailto, else null. */
export function safeUrl(raw) {
  const text = String(raw ?? "").trim().replace(/^<|>$/g, "");
  if (!text) return null;
  let url;
  try {
    url = new URL(text);
  } catch {
    return null; // relative or malformed: not a link
  }
  return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
}

function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const child of children.flat()) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function link(url, children) {
  const a = el("a", ...children);
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  return a;
}

// -- inline -------------------------------------------------------------------

const ESCAPABLE = /[\\`*_{}[\]()#+\-.!|>~<]/;
const AUTOLINK = /^(?:https?:\/\/|mailto:)[^\s<>"]+/i;

function findClosing(text, start, open, close) {
  let depth = 0;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (c === "\\") { i++; continue; }
    if (c === open) depth++;
    else if (c === close) {
      depth--;
      if (depth === 0) return i;
    }
  }
  return -1;
}

function isWordChar(c) {
  return c !== undefined && /[\p{L}\p{N}]/u.test(c);
}

function findDelimiter(text, from, delim) {
  const single = delim.length === 1;
  for (let i = from; i < text.length; i++) {
    if (text[i] === "\\") { i++; continue; }
    if (text[i] === "`") {
      const end = text.indexOf("`", i + 1);
      if (end > 0) { i = end; continue; }
    }
    if (!text.startsWith(delim, i)) continue;
    if (/\s/.test(text[i - 1] ?? " ")) continue; // closing delimiter must follow text
    if (single && text[i + 1] === delim) { i++; continue; }
    if (delim[0] === "_" && isWordChar(text[i + delim.length])) continue; // snake_case
    return i;
  }
  return -1;
}

function inline(text, ctx, depth = 0) {
  if (depth > MAX_DEPTH) return [document.createTextNode(text)];
  const nodes = [];
  let buf = "";
  const flush = () => {
    if (buf) nodes.push(document.createTextNode(buf));
    buf = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const rest = text.slice(i);

    if (c === "\\" && ESCAPABLE.test(text[i + 1] ?? "")) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\n") {
      flush();
      nodes.push(document.createElement("br"));
      i++;
      continue;
    }
    if (c === "`") {
      const run = /^`+/.exec(rest)[0];
      const end = text.indexOf(run, i + run.length);
      if (end > 0) {
        flush();
        nodes.push(el("code", text.slice(i + run.length, end).replace(/^ (.+) $/, "$1")));
        i = end + run.length;
      } else {
        buf += run;
        i += run.length;
      }
      continue;
    }
    if (c === "[") {
      const cite = /^\[(\d{1,3})\](?!\()/.exec(rest);
      if (cite && ctx.citation) {
        const node = ctx.citation(Number(cite[1]));
        if (node) {
          flush();
          nodes.push(node);
          i += cite[0].length;
          continue;
        }
      }
    }
    if (c === "[" || (c === "!" && text[i + 1] === "[")) {
      const image = c === "!";
      const open = image ? i + 1 : i;
      const close = findClosing(text, open, "[", "]");
      if (close > 0 && text[close + 1] === "(") {
        const end = findClosing(text, close + 1, "(", ")");
        if (end > 0) {
          const label = text.slice(open + 1, close);
          const target = text.slice(close + 2, end).trim().split(/\s+/)[0] ?? "";
          flush();
          if (image) {
            nodes.push(el("span", label)); // alt text only: nothing is fetched
          } else {
            const url = ctx.inLink ? null : safeUrl(target);
            const inner = inline(label, { ...ctx, inLink: true }, depth + 1);
            nodes.push(url ? link(url, inner) : el("span", ...inner));
          }
          i = end + 1;
          continue;
        }
      }
    }
    if (c === "*" || c === "_") {
      const run = c === "*" ? /^\*+/.exec(rest)[0] : /^_+/.exec(rest)[0];
      const opensWord = !/\s/.test(text[i + run.length] ?? " ");
      const leftOk = c === "*" || !isWordChar(text[i - 1]);
      if (opensWord && leftOk) {
        const size = run.length >= 2 ? 2 : 1;
        const delim = c.repeat(size);
        const close = findDelimiter(text, i + size + 1, delim);
        if (close > 0) {
          flush();
          const inner = inline(text.slice(i + size, close), ctx, depth + 1);
          nodes.push(el(size === 2 ? "strong" : "em", ...inner));
          i = close + size;
          continue;
        }
      }
      buf += run;
      i += run.length;
      continue;
    }
    if (c === "~" && text[i + 1] === "~") {
      const close = text.indexOf("~~", i + 2);
      if (close > i + 2) {
        flush();
        nodes.push(el("del", ...inline(text.slice(i + 2, close), ctx, depth + 1)));
        i = close + 2;
        continue;
      }
    }
    if (c === "<") {
      const auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(rest);
      const url = auto && !ctx.inLink ? safeUrl(auto[1]) : null;
      if (url) {
        flush();
        nodes.push(link(url, [auto[1]]));
        i += auto[0].length;
        continue;
      }
    }
    if ((c === "h" || c === "H" || c === "m" || c === "M") && !ctx.inLink && !isWordChar(text[i - 1])) {
      const auto = AUTOLINK.exec(rest);
      if (auto) {
        const raw = auto[0].replace(/[.,;:!?'")\]]+$/, "");
        const url = safeUrl(raw);
        if (url && raw.length > 8) {
          flush();
          nodes.push(link(url, [raw]));
          i += raw.length;
          continue;
        }
      }
    }
    buf += c;
    i++;
  }
  flush();
  return nodes;
}

// -- blocks -------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?/;
const ITEM = /^( {0,8})([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim());
}

function blocks(lines, ctx, depth) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }

    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++; // the closing fence (or the end while streaming)
      const code = el("code", body.join("\n"));
      if (fence[2]) code.dataset.lang = fence[2];
      out.push(el("pre", code));
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(6, heading[1].length + ctx.headingOffset);
      out.push(el(`h${level}`, ...inline(heading[2], ctx)));
      i++;
      continue;
    }
    if (RULE.test(line)) {
      out.push(document.createElement("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && lines[i].trim() && (QUOTE.test(lines[i]) || !isBlockStart(lines[i]))) {
        inner.push(lines[i].replace(QUOTE, ""));
        i++;
      }
      const quote = document.createElement("blockquote");
      quote.append(...(depth < MAX_DEPTH ? blocks(inner, ctx, depth + 1) : [inner.join("\n")]));
      out.push(quote);
      continue;
    }
    const item = ITEM.exec(line);
    if (item) {
      const indent = item[1].length;
      const ordered = /\d/.test(item[2]);
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered && parseInt(item[2], 10) !== 1) list.start = parseInt(item[2], 10);
      while (i < lines.length) {
        const current = ITEM.exec(lines[i]);
        if (!current || current[1].length !== indent || /\d/.test(current[2]) !== ordered) break;
        const content = [current[3]];
        i++;
        // Continuation: deeper-indented lines (nested lists) and lazy lines of text.
        while (i < lines.length) {
          const next = lines[i];
          if (!next.trim()) {
            const after = lines[i + 1];
            if (after && /^\s{2,}\S/.test(after) && (ITEM.exec(after)?.[1].length ?? indent + 2) > indent) {
              content.push("");
              i++;
              continue;
            }
            break;
          }
          const nested = ITEM.exec(next);
          if (nested && nested[1].length <= indent) break;
          if (!nested && isBlockStart(next) && !/^\s{2,}/.test(next)) break;
          content.push(next.replace(new RegExp(`^ {0,${indent + 4}}`), ""));
          i++;
        }
        const li = document.createElement("li");
        const nestedBlock = content.length > 1 && content.slice(1).some((l) => ITEM.test(l) || !l.trim());
        if (nestedBlock && depth < MAX_DEPTH) {
          li.append(...inline(content[0], ctx));
          li.append(...blocks(content.slice(1), ctx, depth + 1));
        } else {
          li.append(...inline(content.join("\n"), ctx));
        }
        list.append(li);
      }
      out.push(list);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const head = splitRow(line);
      const table = document.createElement("table");
      const thead = el("thead", el("tr", ...head.map((cell) => {
        const th = el("th", ...inline(cell, ctx));
        th.scope = "col";
        return th;
      })));
      const tbody = document.createElement("tbody");
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
        const cells = splitRow(lines[i]);
        tbody.append(el("tr", ...head.map((_, n) => el("td", ...inline(cells[n] ?? "", ctx)))));
        i++;
      }
      table.append(thead, tbody);
      out.push(el("div", table));
      out[out.length - 1].className = "md-table";
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i]))) {
      para.push(lines[i].replace(/^\s+/, ""));
      i++;
    }
    out.push(el("p", ...inline(para.join("\n").replace(/\s+$/, ""), ctx)));
  }
  return out;
}

/**
 * Render Markdown to a DocumentFragment.
 * options.citation(n) -> Node|null: how to show "[n]" (a link to source n), or null to keep the text.
 * options.headingOffset: added to heading levels (answers sit under the page's own headings).
 */
export function renderMarkdown(text, options = {}) {
  const ctx = { citation: options.citation ?? null, headingOffset: options.headingOffset ?? 2, inLink: false };
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").replace(/\u0000/g, "\uFFFD").split("\n");
  const fragment = document.createDocumentFragment();
  fragment.append(...blocks(lines, ctx, 0));
  return fragment;
}

/** Inline-only rendering (for short texts such as document snippets). */
export function renderInline(text, options = {}) {
  const fragment = document.createDocumentFragment();
  fragment.append(...inline(String(text ?? ""), { citation: options.citation ?? null, headingOffset: 0, inLink: false }));
  return fragment;
}
