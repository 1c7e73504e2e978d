/* A small Markdown subset for model output, rendered as DOM nodes -- never as HTML.
 *
 * Model text is untrusted: every character reaches the page through textContent or a
 * text node, so "<script>" or "<img onerror=...>" in an answer is shown, not run.  Links
 * are kept only for http(s) URLs.  Supported: fenced code blocks (``` with an optional
 * language; an unclosed fence, as while streaming, runs to the end), inline code, **bold**,
 * *italic* / _italic_, [links](https://...), # headings, > quotes, - and 1. lists,
 * paragraphs with line breaks kept.
 */
(function () {
  "use strict";

  const INLINE = new RegExp([
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)",        // 1,2: code span
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*",            // 3: bold
    "(?<![\\w])__(?=\\S)([\\s\\S]*?\\S)__(?![\\w])", // 4: bold
    "\\*(?=[^\\s*])([^*]*?[^\\s*])\\*",              // 5: italic
    "(?<![\\w])_(?=[^\\s_])([^_]*?[^\\s_])_(?![\\w])", // 6: italic
    "\\[([^\\]\\n]+)\\]\\((https?:\\/\\/[^\\s)]+)\\)", // 7,8: link
  ].join("|"), "g");

  function el(tag, cls) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    return node;
  }

  function appendInline(parent, text) {
    let last = 0;
    INLINE.lastIndex = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      let node;
      if (m[2] !== undefined) {
        node = el("code");
        node.textContent = m[2];
      } else if (m[3] !== undefined || m[4] !== undefined) {
        node = el("strong");
        appendInline(node, m[3] !== undefined ? m[3] : m[4]);
      } else if (m[5] !== undefined || m[6] !== undefined) {
        node = el("em");
        appendInline(node, m[5] !== undefined ? m[5] : m[6]);
      } else {
        node = el("a");
        node.href = m[8];
        node.rel = "noopener noreferrer nofollow";
        node.target = "_blank";
        node.textContent = m[7];
      }
      parent.appendChild(node);
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function appendLines(parent, lines) {
    lines.forEach((line, i) => {
      if (i) parent.appendChild(el("br"));
      appendInline(parent, line);
    });
  }

  const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const QUOTE = /^>\s?(.*)$/;
  const UL = /^\s*[-*+]\s+(.*)$/;
  const OL = /^\s*(\d{1,9})[.)]\s+(.*)$/;

  function renderMarkdown(text) {
    const out = document.createDocumentFragment();
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = line.match(FENCE))) {
        const fence = m[1], body = [];
        i++;
        while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length)) &&
                                      lines[i].trim().replace(/[`~]/g, "") === "")) {
          body.push(lines[i++]);
        }
        i++; // the closing fence (or past the end)
        const pre = el("pre"), code = el("code");
        if (m[2]) code.dataset.lang = m[2];
        code.textContent = body.join("\n");
        pre.appendChild(code);
        out.appendChild(pre);
      } else if ((m = line.match(HEADING))) {
        const h = el("h" + Math.min(m[1].length, 3));
        appendInline(h, m[2]);
        out.appendChild(h);
        i++;
      } else if (QUOTE.test(line)) {
        const quote = el("blockquote"), body = [];
        while (i < lines.length && (m = lines[i].match(QUOTE))) { body.push(m[1]); i++; }
        appendLines(quote, body);
        out.appendChild(quote);
      } else if (UL.test(line) || OL.test(line)) {
        const ordered = !UL.test(line), re = ordered ? OL : UL;
        const list = el(ordered ? "ol" : "ul");
        if (ordered) list.start = parseInt(line.match(OL)[1], 10);
        while (i < lines.length && (m = lines[i].match(re))) {
          const item = el("li");
          appendInline(item, ordered ? m[2] : m[1]);
          list.appendChild(item);
          i++;
        }
        out.appendChild(list);
      } else if (line.trim() === "") {
        i++;
      } else {
        const para = el("p"), body = [];
        while (i < lines.length && lines[i].trim() !== "" && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
               !QUOTE.test(lines[i]) && !UL.test(lines[i]) && !OL.test(lines[i])) {
          body.push(lines[i++]);
        }
        appendLines(para, body);
        out.appendChild(para);
      }
    }
    return out;
  }

  window.renderMarkdown = renderMarkdown;
})();
