/* A small Markdown subset for model output, rendered as DOM nodes -- never as HTML.
 *
 * Model text is untrusted: every character reaches the page through textContent or a
 * text node, so "<script>" or "<img onerror=...>" in an answer is shown, not run.  Links
 * are kept only for http(s) URLs.  Supported: fenced code blocks (``` with an optional
 * language; an unclosed fence, as while streaming, runs to the end), inline code, **bold**,
 * *italic* / _italic_, [links](https://...), # headings, > quotes, - and 1. lists,
 * paragraphs with line breaks kept.
 *
 * Linear time, whatever the text: the inline scanner never searches the same stretch of
 * text twice for the same closer (each search goes through a `finder` that remembers its
 * last answer), and every line pattern matches in one pass, so 220 KB of
 * "[a](http" + "://", of "*a *" or of spaces on one line renders in milliseconds instead
 * of seconds of regex backtracking.
 *
 * Two entry points: renderMarkdown(text) returns a fragment of the whole text;
 * renderMarkdownInto(box, text) keeps box showing text and, when text only grew since
 * the last call (a streamed answer), keeps the blocks that cannot change any more and
 * re-renders only the tail.  Both give the same DOM for the same text.
 */
(function () {
  "use strict";

  function el(tag, cls) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    return node;
  }

  // ------------------------------------------------------------------ inline

  const SPECIAL = /[`*_[]/g;         // where a construct can start
  const STAR_CLOSE = /\S\*\*/g;      // ** closing bold: after a non-space
  const UNDER_CLOSE = /\S__(?!\w)/g; // __ closing bold: after a non-space, not before a word character
  const STAR = /\*/g;
  const UNDER = /_/g;
  const LABEL_END = /[\]\n]/g;
  const URL_END = /[\s)]/g;
  const SCHEME = /\(https?:\/\//y;
  const BACKTICKS = /`+/g;
  const SPACE = /\s/;
  const WORD = /\w/;

  /* next(s): the index of the first match of the global regex `re` at or after s
   * (text.length if none).  The last answer is remembered: a query that falls between the
   * last start and the match it found gets that match without searching again, so
   * increasing queries cost one pass over the text in all. */
  function finder(text, re) {
    let from = -1, at = -1;
    return (s) => {
      if (from >= 0 && s >= from && s <= at) return at;
      re.lastIndex = s;
      const m = re.exec(text);
      from = s;
      at = m ? m.index : text.length;
      return at;
    };
  }

  /* Backtick runs: a run of n backticks opens a code span closed by the next run of
   * exactly n backticks (CommonMark).  closer(p, n) walks each length's list once. */
  function backtickRuns(text) {
    const length = new Map(), byLength = new Map();
    BACKTICKS.lastIndex = 0;
    let m;
    while ((m = BACKTICKS.exec(text))) {
      const n = m[0].length;
      length.set(m.index, n);
      if (!byLength.has(n)) byLength.set(n, { at: [], i: 0 });
      byLength.get(n).at.push(m.index);
    }
    return {
      length: (p) => length.get(p) || 1,
      closer(p, n) {
        const list = byLength.get(n);
        if (!list) return -1;
        while (list.i < list.at.length && list.at[list.i] <= p) list.i++;
        return list.i < list.at.length ? list.at[list.i] : -1;
      },
    };
  }

  function appendInline(parent, text) {
    const n = text.length;
    SPECIAL.lastIndex = 0;
    if (!SPECIAL.test(text)) { // plain text (most of it, and the inside of most constructs)
      if (n) parent.appendChild(document.createTextNode(text));
      return;
    }
    const next = {
      special: finder(text, SPECIAL), starClose: finder(text, STAR_CLOSE), underClose: finder(text, UNDER_CLOSE),
      star: finder(text, STAR), under: finder(text, UNDER), labelEnd: finder(text, LABEL_END),
      urlEnd: finder(text, URL_END),
    };
    const runs = backtickRuns(text);
    const isSpace = (i) => SPACE.test(text[i]);
    const isWord = (i) => i >= 0 && i < n && WORD.test(text[i]);

    /* The construct starting at p, as [node, end], or null: tried in the order code,
     * bold, italic, link, each with the first closer that fits (no backtracking). */
    function construct(p) {
      const c = text[p];
      if (c === "`") {
        const k = runs.length(p), q = runs.closer(p, k);
        if (q < 0) return null;
        const code = el("code");
        code.textContent = text.slice(p + k, q);
        return [code, q + k];
      }
      if (c === "*" || c === "_") {
        const star = c === "*";
        if (!star && isWord(p - 1)) return null; // _ and __ only at a word's start
        if (text[p + 1] === c && p + 2 < n && !isSpace(p + 2)) {
          const q = (star ? next.starClose : next.underClose)(p + 2) + 1;
          if (q < n) {
            const strong = el("strong");
            appendInline(strong, text.slice(p + 2, q));
            return [strong, q + 2];
          }
        }
        if (p + 1 < n && text[p + 1] !== c && !isSpace(p + 1)) {
          const q = (star ? next.star : next.under)(p + 1); // the text between holds no c
          if (q < n && !isSpace(q - 1) && (star || !isWord(q + 1))) {
            const em = el("em");
            appendInline(em, text.slice(p + 1, q));
            return [em, q + 1];
          }
        }
        return null;
      }
      // "[label](http(s)://url)": the label ends at the first ] (no newline), the URL at
      // the first space or )
      const q = next.labelEnd(p + 1);
      if (q >= n || text[q] !== "]" || q === p + 1) return null;
      SCHEME.lastIndex = q + 1;
      if (!SCHEME.test(text)) return null;
      const s = SCHEME.lastIndex, u = next.urlEnd(s);
      if (u >= n || text[u] !== ")" || u === s) return null;
      const a = el("a");
      a.href = text.slice(q + 2, u);
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      a.textContent = text.slice(p + 1, q);
      return [a, u + 1];
    }

    let last = 0, p = next.special(0);
    while (p < n) {
      const found = construct(p);
      if (found) {
        if (p > last) parent.appendChild(document.createTextNode(text.slice(last, p)));
        parent.appendChild(found[0]);
        last = found[1];
        p = next.special(last);
      } else {
        p = next.special(p + (text[p] === "`" ? runs.length(p) : 1)); // an unclosed run stays text whole
      }
    }
    if (last < n) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function appendLines(parent, lines) {
    lines.forEach((line, i) => {
      if (i) parent.appendChild(el("br"));
      appendInline(parent, line);
    });
  }

  // ------------------------------------------------------------------ blocks

  // Each matches a line in one pass: no two adjacent parts can trade characters, and the
  // rest of a line is [\s\S]* (a line may hold U+2028, which "." does not match).
  const FENCE = /^(`{3,}|~{3,})\s*([\w+#.-]*)$/; // on the trimmed line
  const HEADING = /^(#{1,6})\s+([\s\S]*)$/;
  const QUOTE = /^>\s?([\s\S]*)$/;
  const UL = /^\s*[-*+]\s+([\s\S]*)$/;
  const OL = /^\s*(\d{1,9})[.)]\s+([\s\S]*)$/;
  const isFence = (line) => FENCE.test(line.trim());

  function normalize(text) {
    return String(text).replace(/\r\n?/g, "\n");
  }

  /* The block starting at line i (not blank) as [node, next line].  What decides a block
   * is its own lines and, for all but a closed fence, the first line after them. */
  function block(lines, i) {
    const line = lines[i];
    let m;
    if ((m = line.trim().match(FENCE))) {
      const fence = m[1], body = [];
      i++;
      while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length)) &&
                                    lines[i].trim().replace(/[`~]/g, "") === "")) {
        body.push(lines[i++]);
      }
      const pre = el("pre"), code = el("code");
      if (m[2]) code.dataset.lang = m[2];
      code.textContent = body.join("\n");
      pre.appendChild(code);
      return [pre, i + 1]; // past the closing fence (or past the end)
    }
    if ((m = line.match(HEADING))) {
      const h = el("h" + Math.min(m[1].length, 3));
      appendInline(h, m[2]);
      return [h, i + 1];
    }
    if (QUOTE.test(line)) {
      const quote = el("blockquote"), body = [];
      while (i < lines.length && (m = lines[i].match(QUOTE))) { body.push(m[1]); i++; }
      appendLines(quote, body);
      return [quote, i];
    }
    if (UL.test(line) || OL.test(line)) {
      const ordered = !UL.test(line), re = ordered ? OL : UL;
      const list = el(ordered ? "ol" : "ul");
      if (ordered) list.start = parseInt(line.match(OL)[1], 10);
      while (i < lines.length && (m = lines[i].match(re))) {
        const item = el("li");
        appendInline(item, ordered ? m[2] : m[1]);
        list.appendChild(item);
        i++;
      }
      return [list, i];
    }
    const para = el("p"), body = [];
    while (i < lines.length && lines[i].trim() !== "" && !isFence(lines[i]) && !HEADING.test(lines[i]) &&
           !QUOTE.test(lines[i]) && !UL.test(lines[i]) && !OL.test(lines[i])) {
      body.push(lines[i++]);
    }
    appendLines(para, body);
    return [para, i];
  }

  /* Every block of `lines` from line i: calls add(node, next line) in order. */
  function blocks(lines, i, add) {
    while (i < lines.length) {
      if (lines[i].trim() === "") { i++; continue; }
      const [node, end] = block(lines, i);
      add(node, end);
      i = end;
    }
  }

  function renderMarkdown(text) {
    const out = document.createDocumentFragment();
    blocks(normalize(text).split("\n"), 0, (node) => out.appendChild(node));
    return out;
  }

  /* What renderMarkdownInto last drew in a box: the text of its settled blocks (`done`,
   * ending at a line start), how many of the box's first children they are, and the
   * last of them (to notice a box someone else changed). */
  const views = new WeakMap();

  function renderMarkdownInto(box, text) {
    const full = normalize(text);
    let view = views.get(box);
    if (!view || !full.startsWith(view.done) || (view.count && box.childNodes[view.count - 1] !== view.last)) {
      view = { done: "", count: 0, last: null };
      box.replaceChildren();
    }
    while (box.childNodes.length > view.count) box.lastChild.remove();
    const tail = full.slice(view.done.length).split("\n");
    // A block is settled when every line that decided it is complete: it ends before the
    // tail's last line (which may still grow).
    let offset = 0, line = 0;
    blocks(tail, 0, (node, end) => {
      box.appendChild(node);
      if (end < tail.length - 1 && view.count === box.childNodes.length - 1) {
        while (line < end) offset += tail[line++].length + 1;
        view.count++;
        view.last = node;
      }
    });
    view.done += full.slice(view.done.length, view.done.length + offset);
    views.set(box, view);
  }

  window.renderMarkdown = renderMarkdown;
  window.renderMarkdownInto = renderMarkdownInto;
})();
