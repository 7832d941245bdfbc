// Markdown to DOM by character offsets, so every piece of text keeps the mark of the step
// that wrote it. Only text nodes and a fixed set of elements are ever made: nothing the
// model writes is parsed as HTML. Covered: code fences, headings, lists, paragraphs,
// inline code, bold and italics; anything else shows as the text it is.

const FENCE = /^\s*(```|~~~)/;
const HEADING = /^(#{1,6})\s+/;
const LIST = /^\s*([-*+]|\d+[.)])\s+/;
const ORDERED = /^\s*\d+[.)]/;
const INLINE = /(`+)([^`][\s\S]*?)\1|\*\*([^*\n][^\n]*?)\*\*|(?<![\w*])\*(?![\s*])([^*\n]+?)\*(?![\w*])/g;

function lineSpans(text) {
  const lines = [];
  let start = 0;
  for (;;) {
    const end = text.indexOf("\n", start);
    if (end < 0) {
      lines.push({ start, end: text.length });
      return lines;
    }
    lines.push({ start, end });
    start = end + 1;
  }
}

function isParagraphLine(line) {
  return line.trim() !== "" && !FENCE.test(line) && !HEADING.test(line) && !LIST.test(line);
}

// marks: contiguous [{start, end, mark}] over text; mark(parent, text, mark) appends one run.
export function renderMarkdown(root, text, marks, appendRun) {
  let cursor = 0; // the first mark that may still overlap what is written next
  const runs = (parent, a, b) => {
    while (cursor > 0 && marks[cursor - 1].end > a) cursor -= 1;
    for (let i = cursor; i < marks.length && marks[i].start < b; i += 1) {
      const m = marks[i];
      if (m.end <= a) {
        cursor = i + 1;
        continue;
      }
      appendRun(parent, text.slice(Math.max(a, m.start), Math.min(b, m.end)), m.mark);
    }
  };
  const inline = (parent, a, b) => {
    const source = text.slice(a, b);
    let at = 0;
    for (const match of source.matchAll(INLINE)) {
      runs(parent, a + at, a + match.index);
      const [whole, ticks, code, bold, italic] = match;
      const tag = code !== undefined ? "code" : bold !== undefined ? "strong" : "em";
      const inner = code ?? bold ?? italic;
      const lead = code !== undefined ? ticks.length : bold !== undefined ? 2 : 1;
      const node = document.createElement(tag);
      runs(node, a + match.index + lead, a + match.index + lead + inner.length);
      parent.append(node);
      at = match.index + whole.length;
    }
    runs(parent, a + at, b);
  };
  const lines = lineSpans(text);
  const line = (i) => text.slice(lines[i].start, lines[i].end);
  root.replaceChildren();
  let i = 0;
  while (i < lines.length) {
    const here = line(i);
    const fence = FENCE.exec(here);
    const heading = HEADING.exec(here);
    if (fence) {
      let j = i + 1;
      while (j < lines.length && !line(j).trim().startsWith(fence[1])) j += 1;
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      const lang = here.slice(fence[0].length).trim();
      if (lang) pre.dataset.lang = lang;
      if (j > i + 1) runs(code, lines[i + 1].start, lines[j - 1].end);
      pre.append(code);
      root.append(pre);
      i = j + 1;
    } else if (heading) {
      const h = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`);
      inline(h, lines[i].start + heading[0].length, lines[i].end);
      root.append(h);
      i += 1;
    } else if (LIST.test(here)) {
      const ordered = ORDERED.test(here);
      const list = document.createElement(ordered ? "ol" : "ul");
      let item;
      while (i < lines.length && (item = LIST.exec(line(i))) && ORDERED.test(item[0]) === ordered) {
        const li = document.createElement("li");
        inline(li, lines[i].start + item[0].length, lines[i].end);
        list.append(li);
        i += 1;
      }
      root.append(list);
    } else if (here.trim() === "") {
      i += 1;
    } else {
      let j = i;
      while (j < lines.length && isParagraphLine(line(j))) j += 1;
      const p = document.createElement("p");
      inline(p, lines[i].start, lines[j - 1].end);
      root.append(p);
      i = j;
    }
  }
}
