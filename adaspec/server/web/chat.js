// The chat page: streams answers from /v1/chat/completions and shows, step by step, which
// text came from an accepted draft (the stream's `adaspec` extension, docs/serving.md).
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const KEY = "adaspec-api-key"; // sessionStorage only: gone when the tab closes
const TINTS = 6; // style.css's .tint-0 .. .tint-5, one per drafter in order of appearance

const page = {
  key: sessionStorage.getItem(KEY) || "",
  model: null,
  history: [],
  running: null, // the AbortController of the request(s) under way
  drafters: new Map(), // drafter name -> tint index
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (page.key) h.Authorization = `Bearer ${page.key}`;
  return h;
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error?.message || message;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

function tintOf(drafter) {
  if (!page.drafters.has(drafter)) {
    page.drafters.set(drafter, page.drafters.size % TINTS);
    showLegend();
  }
  return page.drafters.get(drafter);
}

function showLegend() {
  const items = [...page.drafters].map(([name, tint]) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch tint-${tint}`;
    li.append(swatch, `accepted draft from ${name}`);
    return li;
  });
  const own = document.createElement("li");
  const plain = document.createElement("span");
  plain.className = "swatch own";
  own.append(plain, "the target's own token");
  $("legend").replaceChildren(...items, own);
}

function describe(step) {
  if (!step) return "";
  const source = step.drafter
    ? `${step.drafter} drafted ${step.drafted}, the target accepted ${step.accepted}`
    : "no draft";
  return `Step ${step.step}: ${source}; ${step.tokens} token${step.tokens === 1 ? "" : "s"} from one target pass`;
}

// One streamed answer: its text in marked pieces, its steps, its timing.
class Answer {
  constructor(parent, title) {
    this.element = document.createElement("article");
    this.element.className = "msg assistant";
    this.element.dataset.state = "running";
    if (title) {
      const h = document.createElement("h2");
      h.textContent = title;
      this.element.append(h);
    }
    this.body = document.createElement("div");
    this.body.className = "answer";
    this.stats = document.createElement("p");
    this.stats.className = "stats";
    this.chart = document.createElement("canvas");
    this.chart.className = "chart";
    this.chart.tabIndex = 0;
    this.chart.setAttribute("role", "img");
    this.chart.addEventListener("keydown", (event) => this.browse(event));
    this.element.append(this.body, this.stats, this.chart);
    parent.append(this.element);
    this.text = "";
    this.marks = []; // contiguous {start, end, mark} over this.text
    this.steps = [];
    this.summary = null;
    this.started = performance.now();
    this.first = null;
    this.last = null;
    this.cursor = -1;
    this.pending = false;
  }

  begin() {
    this.started = performance.now();
    this.stats.textContent = "waiting for the first token…";
  }

  add(chunk) {
    const now = performance.now();
    const choice = chunk.choices?.[0];
    const content = choice?.delta?.content ?? "";
    const extra = chunk.adaspec;
    if (extra && "from_draft" in extra) {
      const step = { ...extra, step: this.steps.length + 1 };
      this.steps.push(step);
      if (this.first === null && step.tokens > 0) this.first = now;
      this.last = now;
      const points = Array.from(content);
      this.push(points.slice(0, step.from_draft).join(""), { step, drafted: true });
      this.push(points.slice(step.from_draft).join(""), { step, drafted: false });
    } else {
      this.push(content, { step: null, drafted: false });
      if (extra) this.summary = extra;
    }
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => this.render());
    }
  }

  push(text, mark) {
    if (!text) return;
    const start = this.text.length;
    this.text += text;
    this.marks.push({ start, end: this.text.length, mark });
  }

  render() {
    this.pending = false;
    this.element.answerText = this.text; // what the page's tests compare with the API's
    renderMarkdown(this.body, this.text, this.marks, appendRun);
    this.stats.textContent = this.statsLine();
    this.draw();
  }

  tokens() {
    return this.steps.reduce((sum, step) => sum + step.tokens, 0);
  }

  // Tokens a second after the first one arrived (the decode rate, the prefill left out).
  rate() {
    const later = this.tokens() - (this.steps[0]?.tokens ?? 0);
    const seconds = (this.last - this.first) / 1000;
    return later > 0 && seconds > 0 ? later / seconds : null;
  }

  statsLine() {
    const tokens = this.tokens();
    if (!this.steps.length) return this.element.dataset.state === "running" ? "waiting for the first token…" : "no tokens";
    const drafted = this.steps.reduce((sum, s) => sum + s.drafted, 0);
    const accepted = this.steps.reduce((sum, s) => sum + s.accepted, 0);
    const rate = this.rate();
    return [
      `${tokens} tokens`,
      rate === null ? "— tok/s" : `${rate.toFixed(1)} tok/s`,
      `${(tokens / this.steps.length).toFixed(2)} tokens per target pass`,
      drafted ? `${Math.round((100 * accepted) / drafted)}% of ${drafted} drafted accepted` : "no drafts",
      `first token ${((this.first - this.started) / 1000).toFixed(2)} s`,
    ].join(" · ");
  }

  draw() {
    const canvas = this.chart;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 48;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    const most = Math.max(4, ...this.steps.map((s) => s.tokens));
    const bar = Math.min(8, width / Math.max(1, this.steps.length));
    const style = getComputedStyle(document.documentElement);
    this.steps.forEach((step, i) => {
      const h = (step.tokens / most) * (height - 2);
      const tint = step.accepted ? `--bar-${tintOf(step.drafter)}` : "--bar-own";
      g.fillStyle = style.getPropertyValue(i === this.cursor ? "--bar-focus" : tint);
      g.fillRect(i * bar, height - h, Math.max(1, bar - 1), h);
    });
    const mean = this.steps.length ? (this.tokens() / this.steps.length).toFixed(2) : "0";
    canvas.setAttribute(
      "aria-label",
      `Tokens per target pass over the answer: ${this.steps.length} passes, ${mean} tokens each on average. Arrow keys step through them.`,
    );
  }

  browse(event) {
    const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity };
    if (!(event.key in moves) || !this.steps.length) return;
    event.preventDefault();
    const next = this.cursor + moves[event.key];
    this.cursor = Math.max(0, Math.min(this.steps.length - 1, Number.isFinite(next) ? next : next > 0 ? Infinity : 0));
    $("step-info").textContent = describe(this.steps[this.cursor]);
    this.draw();
  }

  end(error) {
    this.element.dataset.state = error ? "failed" : "done";
    this.render();
    if (error) {
      const p = document.createElement("p");
      p.className = "error";
      p.setAttribute("role", "alert");
      p.textContent = error.name === "AbortError" ? "Stopped." : error.message;
      this.element.append(p);
    }
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy text";
    copy.addEventListener("click", () => navigator.clipboard?.writeText(this.text));
    this.element.append(copy);
  }
}

function appendRun(parent, text, mark) {
  if (!mark.step) {
    parent.append(text);
    return;
  }
  const span = document.createElement("span");
  span.textContent = text;
  span.className = mark.drafted ? `draft tint-${tintOf(mark.step.drafter)}` : "own";
  span.title = describe(mark.step);
  span.dataset.step = String(mark.step.step);
  parent.append(span);
}

async function* chunks(messages, options, signal) {
  const body = {
    model: page.model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    ...options,
  };
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await apiError(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message);
        yield chunk;
      }
    }
  }
}

function settings() {
  const number = (id) => {
    const value = $(id).value.trim();
    return value === "" ? undefined : Number(value);
  };
  const options = {
    temperature: number("temperature"),
    top_p: number("top-p"),
    max_tokens: number("max-tokens"),
    seed: number("seed"),
    speculate: $("speculate").checked,
  };
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
}

function conversation(userText) {
  const system = $("system").value.trim();
  const head = system ? [{ role: "system", content: system }] : [];
  return [...head, ...page.history, { role: "user", content: userText }];
}

function showUser(text) {
  const article = document.createElement("article");
  article.className = "msg user";
  const p = document.createElement("p");
  p.textContent = text;
  article.append(p);
  $("log").append(article);
}

async function answerInto(answer, messages, options, signal) {
  answer.begin();
  try {
    for await (const chunk of chunks(messages, options, signal)) answer.add(chunk);
    answer.end(null);
    return true;
  } catch (error) {
    answer.end(error);
    if (error.status === 401) askForKey(error.message);
    return false;
  }
}

// A request under way (its AbortController in page.running) or none: the buttons follow.
function busy(on) {
  page.running = on ? new AbortController() : null;
  $("send").disabled = on;
  $("compare").disabled = on;
  $("stop").disabled = !on;
}

async function send(event) {
  event?.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || page.running) return;
  const messages = conversation(text);
  $("prompt").value = "";
  showUser(text);
  const answer = new Answer($("log"));
  busy(true);
  await answerInto(answer, messages, settings(), page.running.signal);
  page.history.push({ role: "user", content: text }, { role: "assistant", content: answer.text });
  busy(false);
  answer.element.scrollIntoView({ block: "end" });
}

// The same prompt, greedy, with speculation off then on: the text must match, the time not.
async function compare() {
  const text = $("prompt").value.trim() || page.history.findLast((m) => m.role === "user")?.content;
  if (!text || page.running) return;
  const messages = conversation(text);
  showUser(text);
  const block = document.createElement("section");
  block.className = "compare";
  block.setAttribute("aria-label", "Speculation off and on, side by side");
  $("log").append(block);
  const greedy = { ...settings(), temperature: 0 };
  delete greedy.seed;
  const off = new Answer(block, "Speculation off");
  const on = new Answer(block, "Speculation on");
  busy(true);
  const done =
    (await answerInto(off, messages, { ...greedy, speculate: false }, page.running.signal)) &&
    (await answerInto(on, messages, { ...greedy, speculate: true }, page.running.signal));
  const verdict = document.createElement("p");
  verdict.className = "verdict";
  verdict.setAttribute("role", "status");
  if (done) {
    const same = off.text === on.text;
    const [a, b] = [off.rate(), on.rate()];
    const speed = a && b ? ` Decode ${b.toFixed(1)} against ${a.toFixed(1)} tok/s: ${(b / a).toFixed(2)}x.` : "";
    verdict.textContent = (same ? "Identical text." : "The texts differ.") + speed;
    verdict.dataset.same = String(same);
    if (!$("prompt").value.trim() || $("prompt").value.trim() === text) $("prompt").value = "";
    page.history.push({ role: "user", content: text }, { role: "assistant", content: on.text });
  } else {
    verdict.textContent = "The comparison did not finish.";
  }
  block.append(verdict);
  busy(false);
}

function newChat() {
  page.running?.abort();
  page.history = [];
  $("log").replaceChildren();
  $("step-info").textContent = "";
  $("prompt").focus();
}

function askForKey(message) {
  $("key-message").textContent = message || "This server needs an API key.";
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
  $("key").focus();
}

async function connect() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw await apiError(response);
    const model = (await response.json()).data[0];
    page.model = model.id;
    const setup = model.adaspec || {};
    $("model").textContent = model.id;
    $("drafter").textContent = setup.drafter ?? "—";
    $("policy").textContent = setup.policy ?? "—";
    $("backend").textContent = setup.backend ?? "—";
    document.body.dataset.ready = "true";
  } catch (error) {
    if (error.status === 401) askForKey(error.message);
    else $("model").textContent = `not reachable: ${error.message}`;
  }
}

function wire() {
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  $("stop").addEventListener("click", () => page.running?.abort());
  $("compare").addEventListener("click", compare);
  $("new-chat").addEventListener("click", newChat);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    page.key = $("key").value.trim();
    sessionStorage.setItem(KEY, page.key);
    $("key-dialog").close();
    connect();
  });
  $("log").addEventListener("click", (event) => {
    const span = event.target.closest("span[data-step]");
    if (span) $("step-info").textContent = span.title;
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && page.running) page.running.abort();
  });
  if (matchMedia("(max-width: 800px)").matches) $("settings").open = false; // chat first
  showLegend();
  connect();
}

wire();
