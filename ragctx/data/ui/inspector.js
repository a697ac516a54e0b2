"use strict";
// The context inspector. One renderer for both views: the live page (`/ui`, which calls the same REST
// routes as any client) and the self-contained HTML report (`--html FILE`, data embedded). All text
// from requests goes in through textContent, never as HTML.
(function () {
  const data = JSON.parse(document.getElementById("ragctx-data").textContent);
  const main = document.getElementById("main");
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const num = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(digits));

  // SQuAD's normalisation, as ragctx.evaluation.metrics.has_answer does it.
  function normalize(text) {
    return text.toLowerCase().replace(/[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g, "")
      .replace(/\b(a|an|the)\b/g, " ").split(/\s+/).filter(Boolean).join(" ");
  }
  function hasAnswer(text, answers) {
    const norm = normalize(text);
    return answers.some((a) => normalize(a) && norm.includes(normalize(a)));
  }

  // ---- one result: a pane with the summary, the stages and the passages in their final order -------

  function passageText(text, spans) {
    const p = el("p", { class: "ptext" });
    let at = 0;
    for (const span of spans) {
      if (span.start > at) p.append(el("span", { class: "dropped", text: text.slice(at, span.start) }));
      const mark = el("mark", { class: "kept", "data-start": span.start, "data-end": span.end });
      mark.append(el("span", { class: "sr-only", text: "[kept] " }), text.slice(span.start, span.end));
      p.append(mark);
      at = span.end;
    }
    if (at < text.length) p.append(el("span", { class: "dropped", text: text.slice(at) }));
    return p;
  }

  function passageArticle(passage, position, text) {
    const kept = passage.spans.reduce((n, s) => n + (s.end - s.start), 0);
    const heading = el("h3", {},
      position ? `[${position}] ` : "",
      passage.title || "(untitled)",
      " ",
      el("span", { class: "pid", text: `id ${passage.id}` }));
    const badges = el("ul", { class: "badges", "aria-label": "scores" });
    if (passage.label) badges.append(el("li", { class: "label", text: `label: ${passage.label}` }));
    if (passage.retrieval_score !== null && passage.retrieval_score !== undefined) {
      badges.append(el("li", { text: `retrieval ${num(passage.retrieval_score, 3)}` }));
    }
    for (const [name, value] of Object.entries(passage.scores || {})) {
      badges.append(el("li", { text: `${name.replace(/_/g, " ")} ${num(value, 3)}` }));
    }
    badges.append(el("li", { text: `kept ${kept}/${text.length} chars` }));
    const body = text ? passageText(text, passage.spans) : el("p", { class: "ptext", text: "(text not returned)" });
    return el("li", {},
      el("article", { class: passage.spans.length ? "passage" : "passage dropped-passage", "data-passage-id": passage.id },
        heading, badges, body));
  }

  function stagesTable(stats) {
    const table = el("table", { class: "stages" }, el("caption", { text: "Stages, top to bottom" }));
    const head = el("tr", {});
    for (const col of ["stage", "tokens in", "tokens out", "ms", "note"]) head.append(el("th", { scope: "col", text: col }));
    table.append(el("thead", {}, head));
    const body = el("tbody", {});
    for (const st of stats) {
      const note = st.details && (st.details.reason || st.details.skipped) ? String(st.details.reason || st.details.skipped) : "";
      body.append(el("tr", { "data-stage": st.name },
        el("th", { scope: "row", text: st.name }), el("td", { text: st.tokens_in }), el("td", { text: st.tokens_out }),
        el("td", { text: num(st.ms, 1) }), el("td", { text: note })));
    }
    table.append(body);
    return el("div", { class: "table-wrap" }, table);
  }

  function resultPane(result, texts, heading, answers) {
    const pane = el("section", { class: "pane", "aria-label": heading });
    pane.append(el("h2", { text: heading }));
    const ms = result.stats.reduce((t, s) => t + s.ms, 0);
    const saved = result.tokens_in - result.tokens_out;
    const ratio = result.tokens_in ? result.tokens_out / result.tokens_in : 1;
    const summary = el("ul", { class: "summary" },
      el("li", {}, "tokens ", el("strong", { "data-field": "tokens_in", text: result.tokens_in }), " → ",
        el("strong", { "data-field": "tokens_out", text: result.tokens_out })),
      el("li", {}, "saved ", el("strong", { "data-field": "saved", text: saved }),
        ` (${num(100 * (1 - ratio), 0)} %)`),
      el("li", {}, "kept ratio ", el("strong", { "data-field": "ratio", text: num(ratio, 3) })),
      el("li", {}, el("strong", { text: num(ms, 0) }), " ms"),
      el("li", { text: `counted with ${result.tokenizer || "?"}` }));
    if (answers && answers.length) {
      const ok = hasAnswer(result.context, answers);
      summary.append(el("li", { class: ok ? "answer-ok" : "answer-lost", "data-field": "answer",
        text: ok ? "✓ answer kept" : "✗ answer lost" }));
      summary.append(el("li", { text: `gold: ${answers.join(" | ")}` }));
    }
    pane.append(summary, stagesTable(result.stats));
    const kept = result.passages.filter((p) => p.spans.length);
    const dropped = result.passages.filter((p) => !p.spans.length);
    const textOf = (p) => (typeof p.text === "string" ? p.text : texts[p.id] || "");
    const list = el("ol", { class: "passages", "aria-label": "kept passages in their final order" });
    kept.forEach((p, i) => list.append(passageArticle(p, i + 1, textOf(p))));
    if (!kept.length) {
      const reason = [...result.stats].reverse().find((s) => s.details && s.details.reason);
      list.append(el("li", { text: `Empty context${reason ? `: ${reason.details.reason}` : ""}.` }));
    }
    pane.append(list);
    if (dropped.length) {
      const more = el("ol", { class: "passages" });
      dropped.forEach((p) => more.append(passageArticle(p, 0, textOf(p))));
      pane.append(el("details", { class: "dropped-list" },
        el("summary", { text: `${dropped.length} passage${dropped.length > 1 ? "s" : ""} dropped` }), more));
    }
    return pane;
  }

  // ---- the report's summary plot: kept ratio per question, answer kept or lost ------------------------

  function summaryPlot(sections) {
    const rows = sections.map((s) => ({
      ratio: s.result.tokens_in ? s.result.tokens_out / s.result.tokens_in : 1,
      answered: s.answers && s.answers.length ? hasAnswer(s.result.context, s.answers) : null,
    }));
    const withAnswers = rows.filter((r) => r.answered !== null);
    const meanRatio = rows.reduce((t, r) => t + r.ratio, 0) / rows.length;
    const recall = withAnswers.length ? withAnswers.filter((r) => r.answered).length / withAnswers.length : null;
    const W = 640, H = 220, left = 44, right = 8, top = 10, bottom = 34;
    const plotW = W - left - right, plotH = H - top - bottom;
    const step = plotW / rows.length;
    const caption = `${rows.length} question${rows.length > 1 ? "s" : ""}; mean kept ratio ${num(meanRatio, 3)}` +
      (recall === null ? "" : `; answer kept in ${num(100 * recall, 1)} % (${withAnswers.filter((r) => r.answered).length} of ${withAnswers.length})`);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Kept ratio per question. ${caption}` });
    const defs = svg("defs");
    const hatch = svg("pattern", { id: "lost", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
    hatch.append(svg("rect", { width: 6, height: 6, fill: "#fff" }), svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#a11", "stroke-width": 3 }));
    defs.append(hatch);
    root.append(defs);
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      const y = top + plotH * (1 - tick);
      root.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y, stroke: "#ddd" }));
      root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", "font-size": 11 }, String(tick)));
    }
    rows.forEach((r, i) => {
      const h = Math.max(1, plotH * Math.min(1, r.ratio));
      const bar = svg("rect", {
        x: left + i * step + step * 0.1, y: top + plotH - h, width: Math.max(0.5, step * 0.8), height: h,
        fill: r.answered === false ? "url(#lost)" : "#1f5fbf", stroke: r.answered === false ? "#a11" : "none",
        "data-question": i + 1, "data-answer": r.answered === null ? "unknown" : String(r.answered),
      });
      bar.append(svg("title", {}, `question ${i + 1}: kept ratio ${num(r.ratio, 3)}` +
        (r.answered === null ? "" : r.answered ? ", answer kept" : ", answer lost")));
      root.append(bar);
    });
    root.append(svg("text", { x: left + plotW / 2, y: H - 6, "text-anchor": "middle", "font-size": 12 }, "question"));
    root.append(svg("text", { x: 12, y: top + plotH / 2, "text-anchor": "middle", "font-size": 12,
      transform: `rotate(-90 12 ${top + plotH / 2})` }, "kept ratio"));
    const legend = recall === null ? "" : " Solid bars: answer kept; hatched bars: answer lost.";
    return el("figure", { class: "plot" }, root, el("figcaption", { "data-field": "plot-caption", text: caption + "." + legend }));
  }

  function report() {
    const sections = data.sections;
    if (!sections.length) { main.append(el("p", { text: "No questions in this report." })); return; }
    main.append(summaryPlot(sections));
    sections.forEach((s, i) => {
      const texts = {};
      const heading = `${s.method || "default"} · ${s.limit}`;
      const details = el("details", { class: "question", open: i === 0 || sections.length === 1 });
      details.append(el("summary", { text: `Q${i + 1}: ${s.question}` }));
      details.append(el("div", { class: "panes" }, resultPane(s.result, texts, heading, s.answers)));
      main.append(el("section", { class: "question", "data-question": i + 1 }, details));
    });
  }

  // ---- the live page -------------------------------------------------------------------------------

  function parsePassages(raw) {
    const text = raw.trim();
    if (!text) return [];
    if (text.startsWith("[")) {
      let list;
      try { list = JSON.parse(text); } catch (e) { throw new Error(`passages: not valid JSON (${e.message})`); }
      if (!Array.isArray(list)) throw new Error("passages: a JSON list is expected");
      return list.map((item, i) => {
        if (typeof item === "string") return { id: `p${i + 1}`, title: "", text: item };
        if (!item || typeof item.text !== "string") throw new Error(`passages[${i}] has no string "text"`);
        return { id: String(item.id ?? `p${i + 1}`), title: String(item.title || ""), text: item.text };
      });
    }
    return text.split(/\n\s*\n/).map((block, i) => {
      const lines = block.trim().split("\n");
      const title = lines[0].startsWith("# ") ? lines.shift().slice(2).trim() : "";
      return { id: `p${i + 1}`, title, text: lines.join("\n").trim() };
    });
  }

  function asBlocks(passages) {
    return passages.map((p) => (p.title ? `# ${p.title}\n` : "") + p.text).join("\n\n");
  }

  function field(id, label, control, hint) {
    return el("div", {}, el("label", { for: id }, label, hint ? el("span", { class: "hint", text: ` ${hint}` }) : null), control);
  }

  function runControls(key, name, rate) {
    const method = el("input", { id: `method-${key}`, type: "text", list: "method-names", autocomplete: "off",
      placeholder: `default: ${data.default_method}` });
    const kind = el("select", { id: `kind-${key}` }, el("option", { value: "rate", text: "rate" }), el("option", { value: "budget", text: "token budget" }));
    const value = el("input", { id: `value-${key}`, type: "number", step: "any", min: "0", value: rate });
    return el("fieldset", { class: "run", id: `run-${key}` }, el("legend", { text: name }),
      el("div", { class: "row" }, field(`method-${key}`, "Method", method), field(`kind-${key}`, "Limit", kind), field(`value-${key}`, "Value", value)));
  }

  function app() {
    const form = el("form", { class: "ask", id: "ask", novalidate: true });
    const names = el("datalist", { id: "method-names" });
    for (const m of data.methods) names.append(el("option", { value: m.name, label: m.help }));
    const question = el("textarea", { id: "question", rows: 2, required: true });
    const source = el("fieldset", { class: "choices" }, el("legend", { text: "Passages from" }),
      el("label", {}, el("input", { type: "radio", name: "source", value: "passages", checked: true }), "the box below (POST /v1/compress)"),
      el("label", {}, el("input", { type: "radio", name: "source", value: "index", disabled: !data.index }),
        data.index ? "the service's index (POST /v1/context)" : "the service's index (none is open)"));
    const passages = el("textarea", { id: "passages", spellcheck: "false" });
    const compare = el("input", { type: "checkbox", id: "compare" });
    const runB = runControls("b", "Run B", 0.1);
    runB.hidden = true;
    compare.addEventListener("change", () => { runB.hidden = !compare.checked; });
    const runs = el("div", { class: "runs" }, runControls("a", "Run A", data.default_rate), runB);
    const key = el("input", { id: "api-key", type: "password", autocomplete: "off", value: sessionStorage.getItem("ragctx-api-key") || "" });
    const submit = el("button", { type: "submit", id: "run", text: "Compress" });
    const sample = el("button", { type: "button", id: "sample", class: "secondary", text: "Load the sample" });
    const status = el("p", { id: "status", role: "status", "aria-live": "polite" });
    const results = el("div", { id: "results", class: "panes", "aria-live": "polite" });
    form.append(names, field("question", "Question", question), source,
      field("passages", "Passages", passages, "one per paragraph (a blank line between; a first line “# Title” names it), or a JSON list of {id, title, text}"),
      runs, el("label", { class: "choices" }, compare, " Compare with a second run, side by side"));
    if (data.auth) form.append(field("api-key", "API key", key, "(sent as Authorization: Bearer; kept for this tab only)"));
    form.append(el("div", { class: "buttons" }, submit, sample), status);
    main.append(form, results);

    sample.addEventListener("click", () => {
      question.value = data.sample.question;
      passages.value = asBlocks(data.sample.passages);
      question.focus();
    });

    function body(run, given) {
      const out = { question: question.value };
      const method = document.getElementById(`method-${run}`).value.trim();
      if (method) out.method = method;
      const raw = document.getElementById(`value-${run}`).value.trim();
      if (raw) {
        const kind = document.getElementById(`kind-${run}`).value;
        out[kind] = kind === "budget" ? parseInt(raw, 10) : parseFloat(raw);
      }
      if (given) out.passages = given; else out.include_text = true;
      return out;
    }

    function label(request) {
      const limit = request.budget !== undefined ? `budget ${request.budget}` : request.rate !== undefined ? `rate ${request.rate}` : `rate ${data.default_rate} (default)`;
      return `${request.method || `${data.default_method} (default)`} · ${limit}`;
    }

    async function call(request) {
      const headers = { "Content-Type": "application/json" };
      if (key.value) headers.Authorization = `Bearer ${key.value}`;
      const route = request.passages ? "/v1/compress" : "/v1/context";
      const response = await fetch(route, { method: "POST", headers, body: JSON.stringify(request) });
      const reply = await response.json().catch(() => ({}));
      if (!response.ok) {
        const detail = reply.error ? reply.error.message : Array.isArray(reply.detail) ? reply.detail.map((d) => d.msg).join("; ") : reply.detail;
        throw new Error(`${route} answered ${response.status}: ${detail || response.statusText}`);
      }
      return reply;
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.className = "";
      if (!question.value.trim()) { status.className = "error"; status.textContent = "the question is empty"; question.focus(); return; }
      let given = null;
      try {
        if (form.elements.source.value === "passages") given = parsePassages(passages.value);
      } catch (e) { status.className = "error"; status.textContent = e.message; passages.focus(); return; }
      if (key.value) sessionStorage.setItem("ragctx-api-key", key.value);
      const requests = [body("a", given)];
      if (compare.checked) requests.push(body("b", given));
      const texts = Object.fromEntries((given || []).map((p) => [p.id, p.text]));
      submit.disabled = true;
      status.textContent = "Running…";
      try {
        const replies = await Promise.all(requests.map(call));
        window.ragctxResponses = replies;  // what the panes show, for scripts and tests
        results.replaceChildren(...replies.map((r, i) => resultPane(r, texts, `${"AB"[i]}: ${label(requests[i])}`, null)));
        status.textContent = `Done: ${replies.map((r) => `${r.tokens_in} → ${r.tokens_out} tokens`).join("; ")}.`;
      } catch (e) {
        status.className = "error";
        status.textContent = e.message;
      } finally {
        submit.disabled = false;
      }
    });
  }

  if (data.mode === "report") report(); else app();
})();
