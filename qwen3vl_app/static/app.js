/* Qwen3-VL playground: chat with the server this page came from.
 *
 * Plain browser JavaScript, no build step.  Every URL is relative (works behind a proxy
 * prefix).  Conversations, settings and the API key stay in this browser's localStorage.
 * Streams with fetch + SSE parsing; Stop aborts the fetch, and the server stops the
 * generation when the connection closes.  Model text is rendered by markdown.js as DOM
 * nodes, never as HTML; while an answer streams, only its unsettled tail is redrawn.
 * With Grounding on, the server's `detections` (pixels of each sent image) are drawn as
 * SVG boxes and points over the images they refer to.
 */
(function () {
  "use strict";

  const KEYS = { conversations: "qwen3vl.conversations", active: "qwen3vl.active", settings: "qwen3vl.settings",
                 apiKey: "qwen3vl.apiKey" };
  const $ = (id) => document.getElementById(id);
  const ui = {
    conversations: $("conversations"), messages: $("messages"), notice: $("notice"), card: $("model-card"),
    apiKey: $("api-key"), system: $("system-prompt"), temperature: $("temperature"),
    temperatureValue: $("temperature-value"), maxTokens: $("max-tokens"), grounding: $("grounding"), prompt: $("prompt"),
    fileInput: $("file-input"), attachments: $("attachments"), send: $("send"), stop: $("stop"),
    composer: $("composer"), overlay: $("drop-overlay"), newChat: $("new-chat"), cameraPicker: $("camera-picker"),
  };

  let conversations = load(KEYS.conversations, []);
  let activeId = localStorage.getItem(KEYS.active);
  let pending = [];          // attachments for the next message: {kind, name, url[, camera, preview]}
  let controller = null;     // AbortController of the running request
  let modelId = null;

  // ---------------------------------------------------------------- storage

  function load(key, fallback) {
    try {
      const v = JSON.parse(localStorage.getItem(key));
      return v === null ? fallback : v;
    } catch (e) {
      return fallback;
    }
  }

  function save() {
    try {
      localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
    } catch (e) {
      // Quota (a few MB): keep the words, drop the attachments' bytes, say so.
      for (const c of conversations) for (const m of c.messages) for (const a of m.media || []) a.url = null;
      try {
        localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
        showNotice("Attachments are too large to keep in this browser: the conversations are kept without them.");
      } catch (e2) {
        showNotice("This browser refused to store the conversations (storage full).");
      }
    }
    if (activeId) localStorage.setItem(KEYS.active, activeId);
  }

  function saveSettings() {
    localStorage.setItem(KEYS.settings, JSON.stringify({
      system: ui.system.value, temperature: ui.temperature.value, maxTokens: ui.maxTokens.value,
      grounding: ui.grounding.value,
    }));
  }

  // ---------------------------------------------------------------- conversations

  function active() {
    return conversations.find((c) => c.id === activeId) || null;
  }

  function newConversation() {
    const c = { id: String(Date.now()) + Math.random().toString(16).slice(2, 6), title: "New chat", messages: [] };
    conversations.unshift(c);
    activeId = c.id;
    save();
    return c;
  }

  function renderConversations() {
    ui.conversations.replaceChildren();
    for (const c of conversations) {
      const li = document.createElement("li");
      if (c.id === activeId) li.className = "active";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title;
      open.title = c.title;
      open.addEventListener("click", () => { if (!controller) { activeId = c.id; save(); renderAll(); } });
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "✕";
      del.title = "Delete this conversation";
      del.addEventListener("click", () => {
        if (controller && c.id === activeId) return;
        conversations = conversations.filter((x) => x !== c);
        if (activeId === c.id) activeId = conversations.length ? conversations[0].id : null;
        save();
        renderAll();
      });
      li.append(open, del);
      ui.conversations.appendChild(li);
    }
  }

  // ---------------------------------------------------------------- messages

  function messageView(m) {
    const box = document.createElement("div");
    box.className = "message " + m.role + (m.error ? " error" : "");
    box.dataset.state = m.state || "done";
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = m.role === "user" ? "You" : "Model";
    box.appendChild(role);
    if (m.media && m.media.length) {
      const media = document.createElement("div");
      media.className = "media";
      for (const a of m.media) {
        if (!a.url) {
          const gone = document.createElement("span");
          gone.className = "muted small";
          gone.textContent = `[${a.kind} ${a.name} not kept]`;
          media.appendChild(gone);
          continue;
        }
        const node = document.createElement(a.kind === "video" && !a.camera ? "video" : "img");
        node.src = a.preview || a.url;
        if (node.tagName === "VIDEO") node.controls = true; else node.alt = a.name;
        if (a.camera) node.title = `${a.name}: the snapshot when it was sent`;
        media.appendChild(node);
      }
      box.appendChild(media);
    }
    const content = document.createElement("div");
    content.className = "content";
    box.appendChild(content);
    const stats = document.createElement("div");
    stats.className = "stats";
    box.appendChild(stats);
    fillMessage(box, m);
    return box;
  }

  function fillMessage(box, m) {
    const content = box.querySelector(".content");
    if (m.role === "user") {
      content.replaceChildren(document.createTextNode(m.text));
      content.style.whiteSpace = "pre-wrap";
    } else {
      // The answer's Markdown in its own box, so that a streamed answer redraws only its tail
      // (markdown.js keeps the blocks that are settled); an error line goes after it.
      let md = content.querySelector(":scope > .markdown");
      if (!md) {
        md = document.createElement("div");
        md.className = "markdown";
        content.replaceChildren(md);
      }
      window.renderMarkdownInto(md, m.text || "");
      let error = content.querySelector(":scope > .error-text");
      if (m.error && !error) {
        error = document.createElement("p");
        error.className = "error-text";
        content.appendChild(error);
      }
      if (error && !m.error) error.remove();
      else if (error) error.textContent = m.error;
    }
    content.classList.toggle("cursor", m.state === "streaming");
    box.classList.toggle("error", Boolean(m.error));
    box.dataset.state = m.state || "done";
    box.querySelector(".stats").textContent = statsText(m);
    if (m.role === "assistant") drawDetections(box, m);
  }

  // ---------------------------------------------------------------- grounding

  const SVG = "http://www.w3.org/2000/svg";

  function svgNode(name, attrs) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  // The images an answer's detections refer to: every media item sent with the request,
  // in order (image_index counts images and videos as the server does).
  function sentMedia(m) {
    const conv = active();
    if (!conv || !m.mediaRefs) return [];
    return m.mediaRefs.map(([i, j]) => ((conv.messages[i] || {}).media || [])[j] || null);
  }

  function drawDetections(box, m) {
    let area = box.querySelector(":scope > .grounding");
    if (area) area.remove();
    if (!m.detections || !m.detections.length) return;
    const media = sentMedia(m);
    area = document.createElement("div");
    area.className = "grounding";
    const groups = new Map();
    for (const d of m.detections) {
      if (!groups.has(d.image_index)) groups.set(d.image_index, []);
      groups.get(d.image_index).push(d);
    }
    for (const [index, dets] of groups) {
      const a = media[index];
      if (!a || !a.url || a.kind !== "image") continue;
      const figure = document.createElement("figure");
      figure.className = "grounded";
      figure.dataset.imageIndex = String(index);
      const img = document.createElement("img");
      img.alt = a.name;
      const svg = svgNode("svg", { preserveAspectRatio: "none" });
      img.addEventListener("load", () => {
        // Detections are in the sent image's pixels: its natural size is the drawing's frame.
        const w = img.naturalWidth, h = img.naturalHeight, r = Math.max(w, h) / 120;
        svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
        for (const d of dets) {
          let x, y;
          if (d.bbox_2d) {
            const [x1, y1, x2, y2] = d.bbox_2d;
            svg.appendChild(svgNode("rect", { class: "box", x: x1, y: y1, width: x2 - x1, height: y2 - y1 }));
            [x, y] = [x1, y1];
          } else if (d.point_2d) {
            [x, y] = d.point_2d;
            svg.appendChild(svgNode("circle", { class: "point", cx: x, cy: y, r }));
          } else continue;
          const label = svgNode("text", { class: "label", x, y: Math.max(y - r / 2, r * 2), "font-size": r * 2.5 });
          label.textContent = d.label;
          svg.appendChild(label);
        }
        figure.dataset.drawn = String(dets.length);
      });
      img.src = a.url;
      figure.append(img, svg);
      area.appendChild(figure);
    }
    box.insertBefore(area, box.querySelector(".stats"));
  }

  function statsText(m) {
    const s = m.stats;
    if (!s) return m.state === "stopped" ? "stopped" : "";
    const parts = [];
    if (s.ttft != null) parts.push(`TTFT ${(s.ttft / 1000).toFixed(2)} s`);
    if (s.tps != null) parts.push(`${s.tps.toFixed(1)} tok/s`);
    if (s.promptTokens != null) parts.push(`${s.promptTokens} prompt tokens` + (s.cachedTokens ? ` (${s.cachedTokens} cached)` : ""));
    if (s.completionTokens != null) parts.push(`${s.completionTokens} completion tokens`);
    else if (s.chunks) parts.push(`~${s.chunks} tokens`);
    if (m.state === "stopped") parts.push("stopped");
    else if (s.finish) parts.push(`finish: ${s.finish}`);
    return parts.join(" · ");
  }

  function renderMessages() {
    const c = active();
    ui.messages.replaceChildren();
    if (!c || !c.messages.length) {
      const hint = document.createElement("p");
      hint.className = "muted";
      hint.style.textAlign = "center";
      hint.textContent = "Ask a question, or attach a photo or a clip (Attach, drag & drop, or paste).";
      ui.messages.appendChild(hint);
      return;
    }
    for (const m of c.messages) ui.messages.appendChild(messageView(m));
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function renderAll() {
    renderConversations();
    renderMessages();
  }

  // ---------------------------------------------------------------- attachments

  function addFiles(files) {
    for (const file of files) {
      const kind = file.type.startsWith("image/") ? "image" : file.type.startsWith("video/") ? "video" : null;
      if (!kind) {
        showNotice(`Only images and videos can be attached (${file.name} is ${file.type || "of unknown type"}).`);
        continue;
      }
      const reader = new FileReader();
      reader.onload = () => { pending.push({ kind, name: file.name, url: reader.result }); renderAttachments(); };
      reader.onerror = () => showNotice(`Could not read ${file.name}.`);
      reader.readAsDataURL(file);
    }
  }

  function renderAttachments() {
    ui.attachments.replaceChildren();
    pending.forEach((a, i) => {
      const chip = document.createElement("div");
      chip.className = "chip";
      chip.title = a.name;
      const node = document.createElement(a.kind === "video" && !a.camera ? "video" : "img");
      node.src = a.preview || a.url;
      if (node.tagName === "IMG") node.alt = a.name;
      chip.appendChild(node);
      if (a.camera) {
        const live = document.createElement("span");
        live.className = "live";
        live.textContent = a.kind === "video" ? "clip" : "live";
        chip.appendChild(live);
      }
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = "Remove";
      remove.addEventListener("click", () => { pending.splice(i, 1); renderAttachments(); });
      chip.appendChild(remove);
      ui.attachments.appendChild(chip);
    });
  }

  // ---------------------------------------------------------------- cameras

  // The server's cameras (GET /v1/cameras) in the picker; a picked camera is an attachment
  // whose url is camera://NAME (the server reads the camera when the message is sent) and
  // whose chip shows a snapshot refreshed every two seconds until then.
  async function loadCameras() {
    let cams = [];
    try {
      const r = await fetch("v1/cameras", { headers: headers(false) });
      if (r.ok) cams = (await r.json()).data || [];
    } catch (e) { /* no cameras then */ }
    const picker = ui.cameraPicker;
    picker.replaceChildren(picker.options[0]);
    for (const c of cams) {
      for (const kind of ["image", "video"]) {
        const o = document.createElement("option");
        o.value = kind + ":" + c.name;
        o.textContent = `${c.name} · ${kind === "image" ? "snapshot" : "clip"}` + (c.state === "error" ? " (error)" : "");
        picker.appendChild(o);
      }
    }
    picker.hidden = !cams.length;
  }

  async function snapshot(name) {
    const r = await fetch(`v1/cameras/${encodeURIComponent(name)}/snapshot`, { headers: headers(false) });
    if (!r.ok) throw new Error(await describeError(r));
    const blob = await r.blob();
    return await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error("could not read the snapshot"));
      reader.readAsDataURL(blob);
    });
  }

  async function pickCamera() {
    const [kind, ...rest] = ui.cameraPicker.value.split(":");
    const name = rest.join(":");
    ui.cameraPicker.value = "";
    if (!name) return;
    try {
      const preview = await snapshot(name);
      pending.push({ kind, name: `camera://${name}`, url: `camera://${name}`, camera: name, preview });
      renderAttachments();
    } catch (e) {
      showNotice(`Camera ${name}: ${e.message}`);
    }
  }

  async function refreshSnapshots() {
    const cams = pending.filter((a) => a.camera);
    if (!cams.length || document.hidden) return;
    for (const a of cams) {
      try { a.preview = await snapshot(a.camera); } catch (e) { /* keep the last one */ }
    }
    if (cams.some((a) => pending.includes(a))) renderAttachments();
  }

  // ---------------------------------------------------------------- API

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = ui.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function describeError(r) {
    let message = "", param = "", code = "";
    try {
      const error = ((await r.json()) || {}).error || {};
      message = error.message || "";
      param = error.param || "";
      code = error.code || "";
    } catch (e) { /* not JSON */ }
    const said = message ? `: ${message}` : "";
    if (r.status === 401) {
      return "Wrong or missing API key: the server answered 401. Enter the key the server was started with " +
             "(--api-key or QWEN3VL_API_KEY) in Settings.";
    }
    if (r.status === 503) {
      const retry = r.headers.get("Retry-After");
      return `The server is busy (503)${said}.` + (retry ? ` Try again in ${retry} s.` : " Try again shortly.");
    }
    if (r.status === 413) return `Too large for the server (413)${said}. Attach smaller or fewer files.`;
    if ((r.status === 400 || r.status === 415) && (/content\[\d+\]/.test(param) || /media|image|video/i.test(code))) {
      return `The server refused an attachment${said}`;
    }
    if (r.status >= 400 && r.status < 500) return `The server refused the request (${r.status})${said}`;
    return `Server error (${r.status})${said}`;
  }

  async function loadModelCard() {
    ui.card.replaceChildren();
    const line = (text, cls) => {
      const p = document.createElement("p");
      if (cls) p.className = cls;
      p.textContent = text;
      ui.card.appendChild(p);
      return p;
    };
    let r;
    try {
      r = await fetch("v1/models", { headers: headers(false) });
    } catch (e) {
      line("The server cannot be reached.", "muted");
      return;
    }
    if (!r.ok) {
      line(r.status === 401 ? "Enter the API key (Settings) to see the model." : await describeError(r), "muted");
      return;
    }
    const card = ((await r.json()).data || [])[0];
    if (!card) { line("The server lists no model.", "muted"); return; }
    modelId = card.id;
    const h = document.createElement("h2");
    h.textContent = card.id + " ";
    if (card.demo) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "DEMO · random weights";
      h.appendChild(badge);
    }
    ui.card.appendChild(h);
    line(`engine ${card.engine}` + (card.max_context ? ` · context ${card.max_context} tokens` : ""), "small");
    if (card.capabilities) {
      line(card.capabilities.sampling ? "sampling: temperature, top_p, … honoured"
                                      : "greedy decoding (sampling settings are ignored)", "small muted");
    }
    if (card.demo && card.description) line(card.description, "small muted");
  }

  function apiMessages(conv) {
    const out = [];
    const system = ui.system.value.trim();
    if (system) out.push({ role: "system", content: system });
    for (const m of conv.messages) {
      if (m.role === "user") {
        const media = (m.media || []).filter((a) => a.url);
        if (!media.length) { out.push({ role: "user", content: m.text }); continue; }
        const parts = media.map((a) => a.kind === "video"
          ? { type: "video_url", video_url: { url: a.url } }
          : { type: "image_url", image_url: { url: a.url } });
        if (m.text) parts.push({ type: "text", text: m.text });
        out.push({ role: "user", content: parts });
      } else if (m.role === "assistant" && m.text && !m.error) {
        out.push({ role: "assistant", content: m.text });
      }
    }
    return out;
  }

  function* sseEvents(state, chunk) {
    state.buffer += chunk;
    let cut;
    while ((cut = state.buffer.search(/\r?\n\r?\n/)) >= 0) {
      const raw = state.buffer.slice(0, cut);
      state.buffer = state.buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = raw.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) yield data.join("\n"); // comments (": ping") carry no data
    }
  }

  async function send() {
    if (controller) return;
    const text = ui.prompt.value.trim();
    if (!text && !pending.length) return;
    hideNotice();
    const conv = active() || newConversation();
    if (!conv.messages.length) conv.title = (text || pending[0].name).slice(0, 48);
    conv.messages.push({ role: "user", text, media: pending });
    const mediaRefs = [];
    conv.messages.forEach((m, i) => {
      if (m.role === "user") (m.media || []).forEach((a, j) => { if (a.url) mediaRefs.push([i, j]); });
    });
    const body = {
      model: modelId || "qwen3-vl-instruct",
      messages: apiMessages(conv),
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number(ui.temperature.value),
      max_tokens: Number(ui.maxTokens.value) || 512,
    };
    if (ui.grounding.value && mediaRefs.length) body.grounding = ui.grounding.value;
    const answer = { role: "assistant", text: "", state: "streaming", stats: null };
    if (body.grounding) answer.mediaRefs = mediaRefs;
    conv.messages.push(answer);
    pending = [];
    ui.prompt.value = "";
    renderAttachments();
    renderAll();
    const box = ui.messages.lastElementChild;
    setBusy(true);
    controller = new AbortController();
    const t0 = performance.now();
    let tFirst = null, chunks = 0, usage = null, finish = null, drawn = false, drawnAt = 0, drawCost = 0;
    // At most one redraw per frame, and no sooner than 4x the last one's cost after it: a
    // long unsettled tail (one huge paragraph) takes at most a fifth of the time.
    const redraw = () => {
      if (drawn) return;
      drawn = true;
      setTimeout(() => requestAnimationFrame(() => {
        drawn = false;
        const t = performance.now();
        fillMessage(box, answer);
        ui.messages.scrollTop = ui.messages.scrollHeight;
        drawnAt = performance.now();
        drawCost = drawnAt - t;
      }), Math.max(0, drawnAt + 4 * drawCost - performance.now()));
    };
    try {
      // One session id per conversation: a proxy keeps its turns on one box (deploy/nginx-affinity.conf),
      // where the earlier turns' KV is reused.
      const r = await fetch("v1/chat/completions", {
        method: "POST", headers: { ...headers(true), "X-Session-Id": conv.id }, body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!r.ok) {
        answer.error = await describeError(r);
        answer.state = "error";
        if (r.status === 401) loadModelCard();
      } else {
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        const sse = { buffer: "" };
        let done = false;
        while (!done) {
          const { value, done: end } = await reader.read();
          if (end) break;
          for (const data of sseEvents(sse, decoder.decode(value, { stream: true }))) {
            if (data === "[DONE]") { done = true; break; }
            let obj;
            try { obj = JSON.parse(data); } catch (e) { continue; }
            if (obj.error) { answer.error = `The generation failed: ${obj.error.message || "unknown error"}`; continue; }
            if (obj.usage) usage = obj.usage;
            const choice = (obj.choices || [])[0];
            if (!choice) continue;
            if (choice.finish_reason) finish = choice.finish_reason;
            if (choice.delta && choice.delta.detections) answer.detections = choice.delta.detections;
            const delta = choice.delta && choice.delta.content;
            if (delta) {
              if (tFirst === null) tFirst = performance.now();
              chunks++;
              answer.text += delta;
              redraw();
            }
          }
        }
        answer.state = answer.error ? "error" : "done";
      }
    } catch (e) {
      if (e.name === "AbortError") {
        answer.state = "stopped";
      } else {
        answer.error = `Could not reach the server (${e.message}).`;
        answer.state = "error";
      }
    }
    const tEnd = performance.now();
    const completion = usage ? usage.completion_tokens : null;
    const n = completion != null ? completion : chunks;
    answer.stats = {
      ttft: tFirst !== null ? tFirst - t0 : null,
      tps: tFirst !== null && n > 1 && tEnd > tFirst ? (n - 1) / ((tEnd - tFirst) / 1000) : null,
      promptTokens: usage ? usage.prompt_tokens : null,
      cachedTokens: usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : null,
      completionTokens: completion,
      chunks,
      finish,
    };
    controller = null;
    setBusy(false);
    fillMessage(box, answer);
    save();
    ui.prompt.focus();
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.newChat.disabled = busy;
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    const s = load(KEYS.settings, {});
    if (s.system) ui.system.value = s.system;
    if (s.temperature != null) ui.temperature.value = s.temperature;
    if (s.maxTokens) ui.maxTokens.value = s.maxTokens;
    if (s.grounding) ui.grounding.value = s.grounding;
    ui.temperatureValue.textContent = ui.temperature.value;
    ui.apiKey.value = localStorage.getItem(KEYS.apiKey) || "";

    ui.apiKey.addEventListener("change", () => {
      localStorage.setItem(KEYS.apiKey, ui.apiKey.value.trim());
      hideNotice();
      loadModelCard();
      loadCameras();
    });
    for (const input of [ui.system, ui.temperature, ui.maxTokens, ui.grounding]) input.addEventListener("change", saveSettings);
    ui.temperature.addEventListener("input", () => { ui.temperatureValue.textContent = ui.temperature.value; });

    ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
    ui.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
    });
    ui.stop.addEventListener("click", () => { if (controller) controller.abort(); });
    ui.newChat.addEventListener("click", () => { newConversation(); renderAll(); ui.prompt.focus(); });
    ui.fileInput.addEventListener("change", () => { addFiles(ui.fileInput.files); ui.fileInput.value = ""; });
    ui.prompt.addEventListener("paste", (e) => {
      const files = e.clipboardData && e.clipboardData.files;
      if (files && files.length) { e.preventDefault(); addFiles(files); }
    });
    let depth = 0;
    document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; ui.overlay.hidden = false; });
    document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; ui.overlay.hidden = true; } });
    document.addEventListener("dragover", (e) => e.preventDefault());
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      ui.overlay.hidden = true;
      if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
    });

    // An answer cut off by a page reload is marked as such.
    for (const c of conversations) for (const m of c.messages) if (m.state === "streaming") m.state = "stopped";
    if (!active()) activeId = conversations.length ? conversations[0].id : null;
    renderAll();
    renderAttachments();
    loadModelCard();
    loadCameras();
    ui.cameraPicker.addEventListener("change", pickCamera);
    setInterval(refreshSnapshots, 2000);
  }

  init();
})();
